"""Stock and reservations in the ops console: read-only (stock is set through the API's
product_stock_set; reservations change only through the Inventory Service's handlers and sweep)."""
import datetime as dt

from django.conf import settings
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from a4co import clock
from infra.admin import DeadLetterAdminBase, InboxMessageAdminBase, OutboxMessageAdminBase, ReadOnlyAdmin
from inventory.models import DeadLetter, InboxMessage, OutboxMessage, Product, Reservation, ReservationItem

LOW_STOCK = 10


class StockLevelFilter(admin.SimpleListFilter):
    title = "stock level"
    parameter_name = "stock"

    def lookups(self, request, model_admin):
        return [("out", "out of stock"), ("low", f"low (1 to {LOW_STOCK} available)"),
                ("reserved", "has reserved units")]

    def queryset(self, request, queryset):
        if self.value() == "out":
            return queryset.filter(available_quantity=0)
        if self.value() == "low":
            return queryset.filter(available_quantity__gt=0, available_quantity__lte=LOW_STOCK)
        if self.value() == "reserved":
            return queryset.filter(reserved_quantity__gt=0)
        return queryset


@admin.register(Product)
class ProductAdmin(ReadOnlyAdmin):
    list_display = ["product_id", "name", "available_quantity", "reserved_quantity", "sold_quantity",
                    "stocked_quantity", "updated_at"]
    list_filter = [StockLevelFilter]
    search_fields = ["product_id", "name"]
    readonly_fields = ["product_id", "name", "available_quantity", "reserved_quantity", "sold_quantity",
                       "stocked_quantity", "updated_at"]


class ReservationItemInline(admin.TabularInline):
    model = ReservationItem
    extra = 0
    can_delete = False
    readonly_fields = ["product_id", "quantity"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ExpiringSoonFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiring"

    def lookups(self, request, model_admin):
        return [("soon", f"ACTIVE, expiring within {settings.ADMIN_RESERVATION_EXPIRING_SECONDS}s"),
                ("overdue", "ACTIVE past expiry (the sweep has not run yet)")]

    def queryset(self, request, queryset):
        now = clock.now()
        active = queryset.filter(status=Reservation.Status.ACTIVE)
        if self.value() == "soon":
            soon = now + dt.timedelta(seconds=settings.ADMIN_RESERVATION_EXPIRING_SECONDS)
            return active.filter(expires_at__gt=now, expires_at__lte=soon)
        if self.value() == "overdue":
            return active.filter(expires_at__lte=now)
        return queryset


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["id", "order_link", "status", "expires_at", "expires_in", "created_at"]
    list_filter = ["status", ExpiringSoonFilter]
    search_fields = ["id", "order_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Reservation._meta.fields]
    inlines = [ReservationItemInline]

    @admin.display(description="order", ordering="order_id")
    def order_link(self, reservation):
        return format_html('<a href="{}?q={}">{}</a>', reverse("admin:saga_sagainstance_changelist"),
                           reservation.order_id, reservation.order_id)

    @admin.display(description="expires in")
    def expires_in(self, reservation):
        if reservation.status != Reservation.Status.ACTIVE:
            return "-"
        seconds = int((reservation.expires_at - clock.now()).total_seconds())
        return f"{seconds}s" if seconds >= 0 else f"overdue by {-seconds}s"


admin.site.register(OutboxMessage, OutboxMessageAdminBase)
admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
