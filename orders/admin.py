"""Orders in the ops console: read-only (orders change only through the saga), linked to their saga."""
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from infra.admin import DeadLetterAdminBase, InboxMessageAdminBase, OutboxMessageAdminBase, ReadOnlyAdmin
from orders.models import DeadLetter, InboxMessage, Order, OrderItem, OutboxMessage


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    readonly_fields = ["product_id", "quantity", "unit_price"]
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ["id", "customer_id", "status", "total_amount", "currency", "created_at", "saga_link"]
    list_filter = ["status", "currency"]
    search_fields = ["id", "customer_id"]
    date_hierarchy = "created_at"
    readonly_fields = ["saga_link", *[f.name for f in Order._meta.fields]]
    inlines = [OrderItemInline]

    @admin.display(description="saga")
    def saga_link(self, order):
        saga = getattr(order, "saga", None)
        if saga is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:saga_sagainstance_change", args=[saga.pk]),
                           saga.status)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("saga")


admin.site.register(OutboxMessage, OutboxMessageAdminBase)
admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
