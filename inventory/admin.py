from django.contrib import admin

from infra.admin import DeadLetterAdminBase, InboxMessageAdminBase, OutboxMessageAdminBase
from inventory.models import DeadLetter, InboxMessage, OutboxMessage, Product, Reservation, ReservationItem


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["product_id", "name", "available_quantity", "reserved_quantity", "sold_quantity"]
    search_fields = ["product_id", "name"]
    readonly_fields = ["available_quantity", "reserved_quantity", "sold_quantity", "stocked_quantity", "updated_at"]


class ReservationItemInline(admin.TabularInline):
    model = ReservationItem
    extra = 0
    can_delete = False
    readonly_fields = ["product_id", "quantity"]


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["id", "order_id", "status", "expires_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["id", "order_id"]
    readonly_fields = [f.name for f in Reservation._meta.fields]
    inlines = [ReservationItemInline]


admin.site.register(OutboxMessage, OutboxMessageAdminBase)

admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
