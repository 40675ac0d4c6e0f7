"""The saga console: the saga list (filters for stuck, retrying and failed compensations), the saga
page (one timeline of everything that happened to the order, in every service), the ops actions
(retry the current step, force compensation, mark resolved: each with a reason, audited) and the
audit log.

Pages read the other services' tables directly (read-only, for display); every action goes
through saga.services, which checks the saga's state, acts and writes the audit entry in one
transaction.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable

from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from a4co import clock
from a4co.errors import ApplicationError
from infra.admin import ActionOutcome, AuditedActionsMixin, ReadOnlyAdmin, ReasonForm, pretty_json, pretty_json_html
from infra.deadletters import dead_letter_models
from infra.outbox import outbox_models
from saga.definition import TERMINAL, SagaStatus
from saga.models import AuditEntry, SagaInstance
from saga.services import OpsResult, saga_force_compensation, saga_mark_resolved, saga_retry_step

S = SagaStatus
SERVICES = ("orders", "inventory", "payments")
ENDED = [s.value for s in TERMINAL]


@dataclasses.dataclass(frozen=True)
class Op:
    """One ops action on a saga: its service function and where it applies (the service decides)."""

    name: str
    label: str
    service: Callable[..., OpsResult]
    applies_in: frozenset[SagaStatus]
    explains: str


OPS = {op.name: op for op in (
    Op("retry_step", "Retry the current step", saga_retry_step,
       frozenset({S.STARTED, S.PAYMENT_PROCESSING, S.COMPENSATING, S.COMPENSATION_FAILED}),
       "Re-sends the command the current step waits on (orders.created, payments.process_request or the "
       "pending undo) through the outbox. Safe to repeat: every participant acts at most once per order."),
    Op("force_compensation", "Force compensation", saga_force_compensation,
       frozenset({S.STARTED, S.PAYMENT_PROCESSING}),
       "Starts compensating now, like a cancel: the payment is settled (cancelled or refunded), then the "
       "stock released, then the order cancelled with your reason."),
    Op("mark_resolved", "Mark resolved", saga_mark_resolved, frozenset({S.COMPENSATION_FAILED}),
       "After you fixed by hand what the failed compensation left (money, stock): ends the saga as "
       "COMPENSATED and cancels the order. Sends nothing else."),
)}


def _ops_outcome(result: OpsResult, saga_label: str) -> ActionOutcome:
    return ActionOutcome("applied" if result.applied else "refused", f"{saga_label}: {result.message}")


def _age(since: dt.datetime, until: dt.datetime | None = None) -> str:
    seconds = int(((until or clock.now()) - since).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


# --- List filters --------------------------------------------------------------------------------


class StuckFilter(admin.SimpleListFilter):
    title = "stuck sagas"
    parameter_name = "stuck"

    def lookups(self, request, model_admin):
        idle = settings.ADMIN_SAGA_STUCK_IDLE_SECONDS
        return [("yes", f"stuck: past its deadline, or unchanged for {_age(clock.now() - dt.timedelta(seconds=idle))}")]

    def queryset(self, request, queryset):
        if self.value() != "yes":
            return queryset
        now = clock.now()
        idle_since = now - dt.timedelta(seconds=settings.ADMIN_SAGA_STUCK_IDLE_SECONDS)
        return queryset.exclude(status__in=ENDED).filter(Q(deadline_at__lte=now) | Q(updated_at__lte=idle_since))


def orders_redelivered() -> set[str]:
    """Order ids with a message some consumer (in any service) got more than once."""
    ids: set[str] = set()
    for service in SERVICES:
        inbox = apps.get_model(service, "InboxMessage")
        ids.update(inbox.objects.filter(deliveries__gt=1).exclude(aggregate_id="")
                   .values_list("aggregate_id", flat=True).distinct())
    return {i for i in ids if _is_uuid(i)}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class RetryingFilter(admin.SimpleListFilter):
    title = "retrying sagas"
    parameter_name = "retrying"

    def lookups(self, request, model_admin):
        return [("yes", "retrying: a message delivered more than once, or an undo re-requested")]

    def queryset(self, request, queryset):
        if self.value() != "yes":
            return queryset
        return queryset.filter(Q(order_id__in=orders_redelivered()) | Q(compensation_attempts__gt=1))


class CompensationFailedFilter(admin.SimpleListFilter):
    title = "failed compensations"
    parameter_name = "compensation_failed"

    def lookups(self, request, model_admin):
        return [("yes", "COMPENSATION_FAILED: needs you")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(status=S.COMPENSATION_FAILED)
        return queryset


# --- The timeline --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimelineEntry:
    at: dt.datetime
    source: str      # which service / table it comes from
    kind: str        # step, outbox, inbox, reservation, payment, dead-letter, audit (CSS class)
    title: str
    facts: tuple[str, ...] = ()
    payload: str = ""
    warn: bool = False


def saga_timeline(saga: SagaInstance) -> list[TimelineEntry]:
    """Everything recorded about the saga's order, in every service, oldest first."""
    order_id = str(saga.order_id)
    entries: list[TimelineEntry] = []
    for step in saga.steps.all():
        moved = (f"{step.status_from} → {step.status_to}" if step.status_from and step.status_from != step.status_to
                 else step.status_to)
        entries.append(TimelineEntry(
            at=step.created_at, source="saga", kind="step", title=f"{step.step}: {step.outcome}",
            facts=tuple(f for f in (f"trigger {step.trigger}", moved,
                                    "NOT APPLIED" if not step.applied else "",
                                    f"event {step.event_id}" if step.event_id else "") if f),
            payload=pretty_json(step.detail) if step.detail else "", warn=not step.applied))
    for outbox in outbox_models():
        service = outbox._meta.app_label
        for row in outbox.objects.filter(aggregate_id=order_id).order_by("created_at"):
            published = "NOT PUBLISHED yet"
            if row.published_at:
                published = f"published {row.published_at:%H:%M:%S.%f}"[:-3]
                if row.stream_sequence:
                    published += f", stream seq {row.stream_sequence}"
            entries.append(TimelineEntry(
                at=row.created_at, source=f"{service} outbox", kind="outbox", title=f"sent {row.subject}",
                facts=tuple(f for f in (f"event {row.id}", published,
                                        f"relay attempts {row.attempts}" if row.attempts else "",
                                        f"last error: {row.last_error}" if row.last_error else "") if f),
                payload=pretty_json(row.payload), warn=bool(row.last_error) or row.published_at is None))
    for service in SERVICES:
        inbox = apps.get_model(service, "InboxMessage")
        for row in inbox.objects.filter(aggregate_id=order_id).order_by("received_at"):
            entries.append(TimelineEntry(
                at=row.received_at, source=f"{service} inbox", kind="inbox",
                title=f"{row.consumer} handled {row.subject}",
                facts=(f"event {row.event_id}", f"delivery #{row.deliveries}"), warn=row.deliveries > 1))
    for dead_model in dead_letter_models():
        for dead in dead_model.objects.filter(aggregate_id=order_id):
            entries.append(TimelineEntry(
                at=dead.first_failed_at, source=f"{dead_model._meta.app_label} dead letters", kind="dead-letter",
                title=f"dead letter: {dead.consumer} gave up on {dead.subject} ({dead.status})",
                facts=(f"deliveries {dead.deliveries}", f"error: {dead.error[:300]}"),
                payload=pretty_json(dead.payload), warn=dead.status == dead_model.Status.OPEN))
    reservation = reservation_for(order_id)
    if reservation is not None:
        items = [{"productId": i.product_id, "quantity": i.quantity} for i in reservation.items.all()]
        entries.append(TimelineEntry(
            at=reservation.created_at, source="inventory", kind="reservation", title="reservation created",
            facts=(f"reservation {reservation.id}", f"expires {reservation.expires_at:%Y-%m-%d %H:%M:%S}"),
            payload=pretty_json(items)))
        if reservation.updated_at > reservation.created_at or reservation.status != "ACTIVE":
            entries.append(TimelineEntry(
                at=reservation.updated_at, source="inventory", kind="reservation",
                title=f"reservation {reservation.status}",
                facts=(reservation.release_reason,) if reservation.release_reason else ()))
    payment = payment_for(order_id)
    if payment is not None:
        entries.append(TimelineEntry(
            at=payment.created_at, source="payments", kind="payment",
            title=f"payment created: {payment.amount} {payment.currency}", facts=(f"payment {payment.id}",)))
        if payment.updated_at > payment.created_at:
            entries.append(TimelineEntry(
                at=payment.updated_at, source="payments", kind="payment", title=f"payment {payment.status}",
                facts=payment_facts(payment), warn=payment.status in ("FAILED", "REQUIRES_ACTION")))
    for entry in AuditEntry.objects.filter(target=order_id):
        entries.append(TimelineEntry(
            at=entry.at, source="ops", kind="audit", title=f"ops: {entry.get_action_display()} by {entry.user}",
            facts=(f"{entry.outcome}", f"reason: {entry.reason}"), payload=pretty_json(entry.details),
            warn=entry.outcome != AuditEntry.Outcome.APPLIED))
    return sorted(entries, key=lambda e: e.at)


def reservation_for(order_id: str):
    return apps.get_model("inventory", "Reservation").objects.prefetch_related("items").filter(
        order_id=order_id).first()


def payment_for(order_id: str):
    return apps.get_model("payments", "Payment").objects.filter(order_id=order_id).first()


def payment_facts(payment) -> tuple[str, ...]:
    facts = [f"PaymentIntent {payment.stripe_payment_intent_id or '(none)'}", f"charge attempts {payment.attempts}"]
    if payment.failure_reason:
        facts.append(f"reason: {payment.failure_reason}")
    if payment.refunded_amount:
        facts.append(f"refunded {payment.refunded_amount} {payment.currency} ({payment.stripe_refund_id}): "
                     f"{payment.refund_reason}")
    return tuple(facts)


# --- Admin pages ---------------------------------------------------------------------------------


@admin.register(SagaInstance)
class SagaInstanceAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = ["order_link", "customer", "status_badge", "age", "current_step", "attempts", "deadline", "idle"]
    list_display_links = ["order_link"]
    list_filter = [StuckFilter, RetryingFilter, CompensationFailedFilter, "status"]
    list_select_related = ["order"]
    search_fields = ["order__id", "order__customer_id"]
    search_help_text = "Order id (or its beginning) or customer id."
    fieldsets = [
        (None, {"fields": ["order_link", "customer", "status_badge", "current_step", "compensation_reason",
                           "compensations_pending", "compensation_attempts", "events_ignored"]}),
        ("Deadlines", {"fields": ["saga_deadline_at", "step_deadline_at", "deadline_at"]}),
        ("Times", {"fields": ["started_at", "updated_at", "finished_at", "age"]}),
    ]
    readonly_fields = ["order_link", "customer", "status_badge", "current_step", "compensation_reason",
                       "compensations_pending", "compensation_attempts", "events_ignored", "saga_deadline_at",
                       "step_deadline_at", "deadline_at", "started_at", "updated_at", "finished_at", "age"]
    actions = ["retry_step", "force_compensation", "mark_resolved"]
    change_form_template = "admin/saga/sagainstance/change_form.html"

    # Columns

    @admin.display(description="order", ordering="order_id")
    def order_link(self, saga):
        return format_html('<a href="{}">{}</a>', reverse("admin:saga_sagainstance_change", args=[saga.pk]),
                           saga.order_id)

    @admin.display(description="customer", ordering="order__customer_id")
    def customer(self, saga):
        return saga.order.customer_id

    @admin.display(description="status", ordering="status")
    def status_badge(self, saga):
        return format_html('<span class="a4co-status a4co-status-{}">{}</span>', saga.status.lower(), saga.status)

    @admin.display(description="age", ordering="started_at")
    def age(self, saga):
        return _age(saga.started_at, saga.finished_at)

    @admin.display(description="attempts", ordering="compensation_attempts")
    def attempts(self, saga):
        return saga.compensation_attempts or "-"

    @admin.display(description="deadline", ordering="deadline_at")
    def deadline(self, saga):
        if saga.deadline_at is None:
            return "-"
        if saga.deadline_at <= clock.now():
            return format_html('<span class="a4co-overdue" title="{}">overdue by {}</span>',
                               f"{saga.deadline_at:%Y-%m-%d %H:%M:%S} UTC", _age(saga.deadline_at))
        return format_html('<span title="{}">in {}</span>', f"{saga.deadline_at:%Y-%m-%d %H:%M:%S} UTC",
                           _age(clock.now(), saga.deadline_at))

    @admin.display(description="unchanged for", ordering="-updated_at")
    def idle(self, saga):
        return "-" if saga.finished_at else _age(saga.updated_at)

    # Permissions: the saga row is only ever written by saga.services.

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    # Bulk actions (changelist)

    def _bulk(self, request, queryset, op: Op):
        def perform(saga, reason, by):
            return _ops_outcome(op.service(order_id=str(saga.order_id), reason=reason, by=by), str(saga.order_id))

        return self.run_audited_action(request, queryset, label=op.label, danger=op.explains, perform=perform)

    @admin.action(description="Retry the current step (asks for a reason)", permissions=["change"])
    def retry_step(self, request, queryset):
        return self._bulk(request, queryset, OPS["retry_step"])

    @admin.action(description="Force compensation (asks for a reason)", permissions=["change"])
    def force_compensation(self, request, queryset):
        return self._bulk(request, queryset, OPS["force_compensation"])

    @admin.action(description="Mark resolved: compensation failed, fixed by hand (asks for a reason)",
                  permissions=["change"])
    def mark_resolved(self, request, queryset):
        return self._bulk(request, queryset, OPS["mark_resolved"])

    # The saga page: read-only fields, the ops actions, the timeline and the audit log

    def get_urls(self):
        return [
            path("<path:object_id>/ops/<str:op>/", self.admin_site.admin_view(self.ops_view),
                 name="saga_sagainstance_ops"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])  # nothing here is edited; actions post to ops/<action>/
        saga = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if saga is not None:
            can_act = self.has_change_permission(request, saga)
            status = SagaStatus(saga.status)
            extra_context.update(
                timeline=saga_timeline(saga),
                audit_entries=[(entry, pretty_json(entry.details))
                               for entry in AuditEntry.objects.filter(target=str(saga.order_id))],
                reservation=reservation_for(str(saga.order_id)),
                payment=payment_for(str(saga.order_id)),
                ops=[{"op": op, "applies": status in op.applies_in,
                      "url": reverse("admin:saga_sagainstance_ops", args=[saga.pk, op.name])} for op in OPS.values()]
                if can_act else [],
                reason_form=ReasonForm(),
                show_save=False, show_save_and_continue=False, show_save_and_add_another=False, show_delete=False,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def ops_view(self, request, object_id, op):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        saga = get_object_or_404(SagaInstance, pk=object_id)
        if op not in OPS:
            raise PermissionDenied(f"no such action {op}")
        if not self.has_change_permission(request, saga):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse("admin:saga_sagainstance_change", args=[saga.pk]))
        form = ReasonForm(request.POST)
        if not form.is_valid():
            self.message_user(request, f"{OPS[op].label}: not done, a reason is required "
                                       f"({'; '.join(form.errors.get('reason', []))})", messages.ERROR)
            return back
        try:
            result = OPS[op].service(order_id=str(saga.order_id), reason=form.cleaned_data["reason"],
                                     by=request.user.get_username())
        except ApplicationError as exc:
            self.message_user(request, f"{OPS[op].label}: failed: {exc}", messages.ERROR)
            return back
        self.message_user(request, f"{OPS[op].label}: {'done' if result.applied else 'refused'}: {result.message}",
                          messages.SUCCESS if result.applied else messages.WARNING)
        return back


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["at", "user", "action", "target_link", "outcome", "reason"]
    list_filter = ["action", "outcome", "user"]
    search_fields = ["target", "user", "reason"]
    date_hierarchy = "at"
    fields = ["id", "at", "user", "action", "target_link", "outcome", "reason", "details_pretty"]
    readonly_fields = fields

    @admin.display(description="order", ordering="target")
    def target_link(self, entry):
        return format_html('<a href="{}?q={}">{}</a>', reverse("admin:saga_sagainstance_changelist"), entry.target,
                           entry.target)

    @admin.display(description="details")
    def details_pretty(self, entry):
        return pretty_json_html(entry.details)
