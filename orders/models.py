"""Orders and their lines, plus the Order Service's outbox and inbox (shared with the saga)."""
from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models
from django.db.models import Q

from a4co import clock
from infra.models import AbstractDeadLetter, AbstractInboxMessage, AbstractOutboxMessage


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING"
        CONFIRMED = "CONFIRMED"
        CANCELLED = "CANCELLED"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner_id = models.BigIntegerField(db_index=True,
                                      help_text="The API user that placed it (auth lives in 'default').")
    customer_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    currency = models.CharField(max_length=3, default="EUR")
    total_amount = models.DecimalField(max_digits=14, decimal_places=2)
    payment_method = models.CharField(max_length=100, default="pm_card_visa")
    reservation_ttl_seconds = models.PositiveIntegerField()
    cancellation_reason = models.CharField(max_length=500, blank=True, default="")
    failure_reason = models.CharField(max_length=500, blank=True, default="")
    payment_id = models.CharField(max_length=64, blank=True, default="")
    reservation_id = models.CharField(max_length=64, blank=True, default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="orders_status_created"),
            # Plain: db_index=True on a CharField adds a LIKE 'x%' index too, written on every
            # insert and (non-HOT) status update, and used by nothing here.
            models.Index(fields=["customer_id"], name="orders_customer"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner_id", "idempotency_key"],
                                    condition=Q(idempotency_key__isnull=False),
                                    name="orders_idempotency_key_unique"),
            models.CheckConstraint(condition=Q(total_amount__gte=0), name="orders_total_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Order {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status != self.Status.PENDING


class OrderItem(models.Model):
    order = models.ForeignKey(Order, related_name="items", on_delete=models.CASCADE)
    product_id = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class OutboxMessage(AbstractOutboxMessage):
    class Meta(AbstractOutboxMessage.Meta):
        db_table = "orders_outbox"
        verbose_name = "outbox message"


class InboxMessage(AbstractInboxMessage):
    class Meta(AbstractInboxMessage.Meta):
        db_table = "orders_inbox"
        verbose_name = "inbox message"


class DeadLetter(AbstractDeadLetter):
    class Meta(AbstractDeadLetter.Meta):
        db_table = "orders_deadletter"
        verbose_name = "dead letter"
