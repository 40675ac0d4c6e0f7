"""Admin pieces every service shares: read-only outbox and inbox pages, the dead-letter page with
its redeliver / discard actions, and the plumbing of audited ops actions (a reason asked on an
intermediate page, a cap per invocation, a "k of n done" report).

The admin is the ops console across the three services: its pages may read any service's
tables, but every action calls a service function.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import DatabaseError
from django.template.response import TemplateResponse
from django.utils.html import format_html

from a4co.errors import ApplicationError

log = logging.getLogger(__name__)
REASON_MAX_LENGTH = 300  # saga.services.OPS_REASON_MAX_LENGTH; the services check it again


def pretty_json(value) -> str:
    """A payload as indented JSON; text that is not JSON is returned as it is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def pretty_json_html(value):
    return format_html('<pre class="a4co-payload">{}</pre>', pretty_json(value))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only their service writes: staff with the view permission may look, nobody edits."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- Audited ops actions -------------------------------------------------------------------------


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH, strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80,
                                     "placeholder": "Why? (ticket, incident, what you checked)"}),
        help_text="Required. Recorded in the audit log with your username and the time.")


@dataclasses.dataclass(frozen=True)
class ActionOutcome:
    outcome: str   # "applied", "refused" (nothing changed) or "failed"
    message: str


class AuditedActionsMixin:
    """Changelist actions that ask for a reason first and act on at most ADMIN_BULK_ACTION_LIMIT rows.

    `run_audited_action` renders the reason page on the first click; on submit it calls
    `perform(obj, reason, username)` for each selected row, one after the other (each call is
    its own transaction and writes its own audit entry), and reports "k of n done".
    """

    confirm_template = "admin/saga/ops_action_confirm.html"

    def run_audited_action(self, request, queryset, *, label: str, danger: str,
                           perform: Callable[[object, str, str], ActionOutcome]):
        limit = settings.ADMIN_BULK_ACTION_LIMIT
        selected = list(queryset[: limit + 1])
        if len(selected) > limit:
            self.message_user(
                request, f"{label}: refused, {queryset.count()} rows selected but at most {limit} may be changed by "
                         f"one action (ADMIN_BULK_ACTION_LIMIT). Nothing was done; select fewer and run it again.",
                messages.ERROR)
            return None
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            opts = self.model._meta
            context = {
                **self.admin_site.each_context(request),
                "title": f"{label}: give a reason",
                "label": label, "danger": danger, "objects": selected, "form": form, "limit": limit,
                "opts": opts, "action_name": request.POST.get("action", ""),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME, "media": self.media,
            }
            return TemplateResponse(request, self.confirm_template, context)
        reason, by = form.cleaned_data["reason"], request.user.get_username()
        counts = {"applied": 0, "refused": 0, "failed": 0}
        for done, obj in enumerate(selected, start=1):
            try:
                result = perform(obj, reason, by)
            except (ApplicationError, DatabaseError) as exc:
                log.exception("ops action %s failed on %s (%s of %s)", label, obj, done, len(selected))
                result = ActionOutcome("failed", f"{obj}: {exc}")
            counts[result.outcome] += 1
            if result.outcome != "applied" or len(selected) == 1:
                level = messages.SUCCESS if result.outcome == "applied" else (
                    messages.WARNING if result.outcome == "refused" else messages.ERROR)
                self.message_user(request, f"{done} of {len(selected)}: {result.message}", level)
        level = messages.SUCCESS if counts["applied"] == len(selected) else messages.WARNING
        self.message_user(request, f"{label}: {len(selected)} of {len(selected)} done: {counts['applied']} applied, "
                                   f"{counts['refused']} refused, {counts['failed']} failed.", level)
        return None


# --- Outbox, inbox and dead letters --------------------------------------------------------------


class PublishedFilter(admin.SimpleListFilter):
    title = "relay"
    parameter_name = "relay"

    def lookups(self, request, model_admin):
        return [("pending", "pending (not published)"), ("published", "published"),
                ("error", "last publish failed")]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(published_at__isnull=True)
        if self.value() == "published":
            return queryset.filter(published_at__isnull=False)
        if self.value() == "error":
            return queryset.exclude(last_error="")
        return queryset


class OutboxMessageAdminBase(ReadOnlyAdmin):
    list_display = ["id", "subject", "aggregate_id", "created_at", "published_at", "stream_sequence", "attempts"]
    list_filter = [PublishedFilter, "subject"]
    search_fields = ["id", "aggregate_id", "subject"]
    date_hierarchy = "created_at"
    fields = ["id", "subject", "aggregate_id", "created_at", "published_at", "stream_sequence", "attempts",
              "last_error", "payload_pretty"]
    readonly_fields = fields

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json_html(obj.payload)


class RedeliveredFilter(admin.SimpleListFilter):
    title = "deliveries"
    parameter_name = "redelivered"

    def lookups(self, request, model_admin):
        return [("yes", "delivered more than once"), ("no", "first delivery")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(deliveries__gt=1)
        if self.value() == "no":
            return queryset.filter(deliveries__lte=1)
        return queryset


class InboxMessageAdminBase(ReadOnlyAdmin):
    list_display = ["consumer", "event_id", "subject", "aggregate_id", "deliveries", "received_at"]
    list_filter = [RedeliveredFilter, "consumer", "subject"]
    search_fields = ["event_id", "aggregate_id"]
    date_hierarchy = "received_at"
    readonly_fields = ["consumer", "event_id", "subject", "aggregate_id", "deliveries", "received_at"]


class DeadLetterAdminBase(admin.ModelAdmin):
    """Dead letters of one service; redeliver or discard them (each action calls the service)."""

    list_display = ["subject", "consumer", "status", "deliveries", "aggregate_id", "last_failed_at", "error_short"]
    list_filter = ["status", "consumer", "subject"]
    search_fields = ["id", "event_id", "aggregate_id"]
    date_hierarchy = "last_failed_at"
    fields = ["id", "consumer", "stream", "stream_sequence", "subject", "event_id", "aggregate_id", "error",
              "deliveries", "first_failed_at", "last_failed_at", "status", "resolved_at", "resolved_by",
              "resolution_note", "redelivered_event_id", "payload_pretty"]
    readonly_fields = fields
    actions = ["redeliver", "discard"]

    @admin.display(description="error")
    def error_short(self, obj) -> str:
        return obj.error[:120]

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json_html(obj.payload)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
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
            else:
                self.message_user(request, f"{dead.subject} #{dead.stream_sequence} discarded")
