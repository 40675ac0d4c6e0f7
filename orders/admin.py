from django.contrib import admin

from infra.admin import DeadLetterAdminBase, InboxMessageAdminBase, OutboxMessageAdminBase
from orders.models import DeadLetter, InboxMessage, Order, OrderItem, OutboxMessage


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    readonly_fields = ["product_id", "quantity", "unit_price"]
    can_delete = False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer_id", "status", "total_amount", "currency", "created_at"]
    list_filter = ["status", "currency"]
    search_fields = ["id", "customer_id"]
    readonly_fields = [f.name for f in Order._meta.fields]
    inlines = [OrderItemInline]


admin.site.register(OutboxMessage, OutboxMessageAdminBase)

admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
