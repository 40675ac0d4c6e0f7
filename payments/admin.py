"""Payments in the ops console: read-only rows, plus the one money-moving action, a full refund,
which needs the `payments.refund` permission, asks for a reason and is audited."""
from __future__ import annotations

from django.contrib import admin
from django.db import transaction
from django.urls import reverse
from django.utils.html import format_html

from infra.admin import (
    ActionOutcome,
    AuditedActionsMixin,
    DeadLetterAdminBase,
    InboxMessageAdminBase,
    OutboxMessageAdminBase,
    ReadOnlyAdmin,
)
from payments import stripe_gateway as gateway
from payments.models import DeadLetter, InboxMessage, OutboxMessage, Payment, StripeWebhookEvent
from payments.services import payment_outcome_announce, payment_settle
from saga.models import AuditEntry
from saga.services import audit_record


def payment_refund_by_ops(payment: Payment, reason: str, by: str) -> ActionOutcome:
    """Refund a SUCCEEDED payment in full through payment_settle (once: Stripe's idempotency key
    and the row's status guard it), announce payments.refunded like the refund handler does, and
    audit it. The audit entry lives in the orders database: it is written after the payments
    transaction, and also when the refund is refused or fails.
    """
    def audit(outcome: str, **details) -> None:
        audit_record(user=by, action=AuditEntry.Action.REFUND, target=payment.order_id, reason=reason,
                     outcome=outcome, details={"paymentId": str(payment.id), "statusBefore": payment.status,
                                               **details})

    if payment.status != Payment.Status.SUCCEEDED:
        why = f"only a SUCCEEDED payment can be refunded; this one is {payment.status}"
        audit(AuditEntry.Outcome.REFUSED, why=why)
        return ActionOutcome("refused", f"payment for {payment.order_id}: {why}")
    try:
        settled = payment_settle(order_id=payment.order_id, reason=f"refunded by ops ({by}): {reason}")
    except (gateway.GatewayUnavailableError, gateway.GatewayRejectedError) as exc:
        audit(AuditEntry.Outcome.FAILED, error=str(exc))
        return ActionOutcome("failed", f"payment for {payment.order_id}: Stripe: {exc}")
    with transaction.atomic(using="payments", durable=True):
        payment_outcome_announce(payment=settled)
    audit(AuditEntry.Outcome.APPLIED, statusAfter=settled.status, refundedAmount=str(settled.refunded_amount),
          stripeRefundId=settled.stripe_refund_id)
    return ActionOutcome("applied", f"payment for {payment.order_id}: {settled.status}, {settled.refunded_amount} "
                                    f"{settled.currency} refunded ({settled.stripe_refund_id})")


class RefundedFilter(admin.SimpleListFilter):
    title = "refunds"
    parameter_name = "refunded"

    def lookups(self, request, model_admin):
        return [("yes", "refunded (some or all)"), ("no", "nothing refunded")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(refunded_amount__gt=0)
        if self.value() == "no":
            return queryset.filter(refunded_amount=0)
        return queryset


@admin.register(Payment)
class PaymentAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = ["id", "order_link", "status", "amount", "currency", "refunded_amount",
                    "stripe_payment_intent_id", "attempts", "created_at", "updated_at"]
    list_filter = ["status", RefundedFilter, "currency"]
    search_fields = ["id", "order_id", "customer_id", "stripe_payment_intent_id", "stripe_refund_id"]
    date_hierarchy = "created_at"
    readonly_fields = ["order_link", *[f.name for f in Payment._meta.fields]]
    actions = ["refund"]

    @admin.display(description="order", ordering="order_id")
    def order_link(self, payment):
        return format_html('<a href="{}?q={}">{}</a>', reverse("admin:saga_sagainstance_changelist"),
                           payment.order_id, payment.order_id)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # rows change only through payments.services

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm("payments.refund")

    @admin.action(description="Refund in full (needs payments.refund; asks for a reason)", permissions=["refund"])
    def refund(self, request, queryset):
        return self.run_audited_action(
            request, queryset, label="Refund in full", perform=payment_refund_by_ops,
            danger="Gives the customer's money back through Stripe (the whole amount, once) and announces "
                   "payments.refunded. Only SUCCEEDED payments are refunded; the others are left alone.")


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "payment_intent_id", "outcome", "received_at"]
    list_filter = ["type"]
    search_fields = ["event_id", "payment_intent_id"]
    date_hierarchy = "received_at"


admin.site.register(OutboxMessage, OutboxMessageAdminBase)
admin.site.register(InboxMessage, InboxMessageAdminBase)
admin.site.register(DeadLetter, DeadLetterAdminBase)
