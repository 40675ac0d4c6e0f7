"""Stock per product and reservations (all-or-nothing, with a TTL), plus this service's outbox/inbox.

Stock identity: available + reserved + sold == stocked, for every product, at every commit.
Database check constraints keep every quantity non-negative, so a bug cannot oversell
silently: it fails the transaction instead.
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import F, Q

from a4co import clock
from infra.models import AbstractDeadLetter, AbstractInboxMessage, AbstractOutboxMessage


class Product(models.Model):
    product_id = models.CharField(max_length=64, primary_key=True)
    name = models.CharField(max_length=200)
    available_quantity = models.IntegerField(default=0)
    reserved_quantity = models.IntegerField(default=0)
    sold_quantity = models.IntegerField(default=0)
    stocked_quantity = models.IntegerField(
        default=0, help_text="Everything ever put on the shelf (sum of stock adjustments).")
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["product_id"]
        constraints = [
            models.CheckConstraint(condition=Q(available_quantity__gte=0), name="product_available_gte_0"),
            models.CheckConstraint(condition=Q(reserved_quantity__gte=0), name="product_reserved_gte_0"),
            models.CheckConstraint(condition=Q(sold_quantity__gte=0), name="product_sold_gte_0"),
            models.CheckConstraint(
                condition=Q(stocked_quantity=F("available_quantity") + F("reserved_quantity")
                            + F("sold_quantity")),
                name="product_stock_adds_up"),
        ]

    def __str__(self) -> str:
        return f"{self.product_id} ({self.available_quantity} available)"


class Reservation(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "ACTIVE"
        COMMITTED = "COMMITTED"
        RELEASED = "RELEASED"
        EXPIRED = "EXPIRED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField()
    release_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status="ACTIVE"),
                         name="reservation_active_expiry"),
        ]
        # A constraint, not unique=True: that would add a second, varchar_pattern_ops index (for
        # LIKE 'x%') written on every reservation insert and status update.
        constraints = [models.UniqueConstraint(fields=["order_id"], name="reservation_one_per_order")]

    def __str__(self) -> str:
        return f"Reservation {self.id} for {self.order_id} ({self.status})"


class ReservationItem(models.Model):
    reservation = models.ForeignKey(Reservation, related_name="items", on_delete=models.CASCADE)
    product_id = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()

    class Meta:
        ordering = ["product_id"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"


class OutboxMessage(AbstractOutboxMessage):
    class Meta(AbstractOutboxMessage.Meta):
        db_table = "inventory_outbox"
        verbose_name = "outbox message"


class InboxMessage(AbstractInboxMessage):
    class Meta(AbstractInboxMessage.Meta):
        db_table = "inventory_inbox"
        verbose_name = "inbox message"


class DeadLetter(AbstractDeadLetter):
    class Meta(AbstractDeadLetter.Meta):
        db_table = "inventory_deadletter"
        verbose_name = "dead letter"
