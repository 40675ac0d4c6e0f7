from django.contrib import admin

from infra.admin import DeadLetterAdminBase, InboxMessageAdminBase, OutboxMessageAdminBase
from payments.models import DeadLetter, InboxMessage, OutboxMessage, Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["id", "order_id", "status", "amount", "currency", "stripe_payment_intent_id", "created_at"]
    list_filter = ["status", "currency"]
    search_fields = ["id", "order_id", "stripe_payment_intent_id"]
    readonly_fields = [f.name for f in Payment._meta.fields]


admin.site.register(OutboxMessage, OutboxMessageAdminBase)

admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
