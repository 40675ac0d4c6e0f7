"""One payment per order (never two charges), plus this service's outbox and inbox."""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from a4co import clock
from infra.models import AbstractDeadLetter, AbstractInboxMessage, AbstractOutboxMessage


class Payment(models.Model):
    class Status(models.TextChoices):
        PROCESSING = "PROCESSING"
        REQUIRES_ACTION = "REQUIRES_ACTION"
        SUCCEEDED = "SUCCEEDED"
        FAILED = "FAILED"
        REFUNDED = "REFUNDED"
        CANCELED = "CANCELED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order_id = models.CharField(max_length=64)
    customer_id = models.CharField(max_length=64)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    payment_method = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PROCESSING)
    stripe_payment_intent_id = models.CharField(max_length=100, blank=True, default="")
    failure_reason = models.CharField(max_length=500, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0, help_text="Stripe confirm attempts.")
    refunded_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    stripe_refund_id = models.CharField(max_length=100, blank=True, default="")
    refund_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["-created_at"]
        # payments.refund: the admin console's refund action moves money, so it needs more than staff.
        permissions = [("refund", "Can refund a payment from the admin console")]
        # Plain btree indexes only: unique=True / db_index=True on a CharField would add a second,
        # varchar_pattern_ops index (for LIKE 'x%') to write on every insert and status update.
        indexes = [models.Index(fields=["stripe_payment_intent_id"], name="payments_intent")]
        constraints = [
            models.UniqueConstraint(fields=["order_id"], name="payments_one_per_order"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="payment_amount_gte_0"),
            models.CheckConstraint(condition=Q(refunded_amount__lte=models.F("amount")),
                                   name="payment_refund_lte_amount"),
        ]

    def __str__(self) -> str:
        return f"Payment {self.id} for {self.order_id} ({self.status})"


class OutboxMessage(AbstractOutboxMessage):
    class Meta(AbstractOutboxMessage.Meta):
        db_table = "payments_outbox"
        verbose_name = "outbox message"


class InboxMessage(AbstractInboxMessage):
    class Meta(AbstractInboxMessage.Meta):
        db_table = "payments_inbox"
        verbose_name = "inbox message"


class DeadLetter(AbstractDeadLetter):
    class Meta(AbstractDeadLetter.Meta):
        db_table = "payments_deadletter"
        verbose_name = "dead letter"


class StripeWebhookEvent(models.Model):
    """A Stripe webhook event we accepted: its id makes redelivered webhooks harmless."""

    event_id = models.CharField(max_length=100, primary_key=True)
    type = models.CharField(max_length=100)
    payment_intent_id = models.CharField(max_length=100, blank=True, default="", db_index=True)
    outcome = models.CharField(max_length=200, blank=True, default="")
    received_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
