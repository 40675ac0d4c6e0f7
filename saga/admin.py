from django.contrib import admin

from saga.models import SagaInstance, SagaStep


class SagaStepInline(admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "step", "trigger", "outcome", "status_from", "status_to", "applied",
                       "event_id", "detail"]
    fields = readonly_fields


@admin.register(SagaInstance)
class SagaInstanceAdmin(admin.ModelAdmin):
    list_display = ["order_id", "status", "current_step", "deadline_at", "events_ignored", "started_at"]
    list_filter = ["status"]
    search_fields = ["order__id", "order__customer_id"]
    readonly_fields = [f.name for f in SagaInstance._meta.fields]
    inlines = [SagaStepInline]
