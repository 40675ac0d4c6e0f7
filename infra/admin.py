"""Admin bases for the outbox and inbox tables that every service database has."""
from django.contrib import admin


class OutboxMessageAdminBase(admin.ModelAdmin):
    list_display = ["id", "subject", "aggregate_id", "created_at", "published_at", "stream_sequence", "attempts"]
    list_filter = ["subject"]
    search_fields = ["id", "aggregate_id"]
    readonly_fields = ["id", "subject", "aggregate_id", "payload", "created_at", "published_at",
                       "stream_sequence", "attempts", "last_error"]


class InboxMessageAdminBase(admin.ModelAdmin):
    list_display = ["consumer", "event_id", "subject", "aggregate_id", "deliveries", "received_at"]
    list_filter = ["consumer", "subject"]
    search_fields = ["event_id", "aggregate_id"]
    readonly_fields = ["consumer", "event_id", "subject", "aggregate_id", "deliveries", "received_at"]
