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


class DeadLetterAdminBase(admin.ModelAdmin):
    """Dead letters of one service; redeliver or discard them (each action calls the service)."""

    list_display = ["subject", "consumer", "status", "deliveries", "aggregate_id", "last_failed_at", "error_short"]
    list_filter = ["status", "consumer", "subject"]
    search_fields = ["id", "event_id", "aggregate_id"]
    readonly_fields = ["id", "consumer", "stream", "stream_sequence", "subject", "event_id", "aggregate_id",
                       "payload", "error", "deliveries", "first_failed_at", "last_failed_at", "status",
                       "resolved_at", "resolved_by", "resolution_note", "redelivered_event_id"]
    actions = ["redeliver", "discard"]

    @admin.display(description="error")
    def error_short(self, obj) -> str:
        return obj.error[:120]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Redeliver (republish under a new event id)")
    def redeliver(self, request, queryset):
        from infra.deadletters import DeadLetterStateError, dead_letter_redeliver

        for dead in queryset:
            try:
                new_id = dead_letter_redeliver(dead_letter_id=str(dead.id), by=request.user.get_username())
            except DeadLetterStateError as exc:
                self.message_user(request, str(exc), level="warning")
            else:
                self.message_user(request, f"{dead.subject} #{dead.stream_sequence} redelivered as {new_id}")

    @admin.action(description="Discard")
    def discard(self, request, queryset):
        from infra.deadletters import DeadLetterStateError, dead_letter_discard

        for dead in queryset:
            try:
                dead_letter_discard(dead_letter_id=str(dead.id), by=request.user.get_username(),
                                    note="discarded in the admin")
            except DeadLetterStateError as exc:
                self.message_user(request, str(exc), level="warning")
