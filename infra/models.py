"""Abstract outbox and inbox tables. Every service database has its own concrete pair.

A service writes its state change and its outgoing `OutboxMessage` in one transaction on its
own alias; the relay publishes pending rows to JetStream with the row id as `Nats-Msg-Id`.
A consumer records `(consumer, event_id)` in its service's `InboxMessage` in the same
transaction as the effect of the message, which makes redelivery harmless.
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from a4co import clock


class AbstractOutboxMessage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False,
                          help_text="The event id: sent as Nats-Msg-Id and recorded by inboxes.")
    subject = models.CharField(max_length=200)
    aggregate_id = models.CharField(max_length=64, help_text="The order this message is about.")
    payload = models.JSONField(help_text="The full wire object (envelope + payload).")
    created_at = models.DateTimeField(default=clock.now)
    published_at = models.DateTimeField(null=True, blank=True)
    stream_sequence = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        abstract = True
        ordering = ["created_at"]
        indexes = [
            # The relay's scan: only pending rows, oldest first; stays tiny when drained.
            models.Index(fields=["created_at"], condition=Q(published_at__isnull=True),
                         name="%(app_label)s_outbox_pending"),
            # An order's message trail (ops). A plain index: Django's default for a CharField adds
            # a second, varchar_pattern_ops one for LIKE 'x%' that nothing here runs, and each
            # index is written on every insert and every (non-HOT) publish update.
            models.Index(fields=["aggregate_id"], name="%(app_label)s_outbox_aggregate"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} {self.id}"

    @property
    def is_published(self) -> bool:
        return self.published_at is not None


class AbstractInboxMessage(models.Model):
    consumer = models.CharField(max_length=100)
    event_id = models.CharField(max_length=100)
    subject = models.CharField(max_length=200)
    aggregate_id = models.CharField(max_length=64, blank=True, default="")
    deliveries = models.PositiveIntegerField(default=1,
                                             help_text="JetStream delivery count when it was handled.")
    received_at = models.DateTimeField(default=clock.now)

    class Meta:
        abstract = True
        constraints = [
            models.UniqueConstraint(fields=["consumer", "event_id"], name="%(app_label)s_inbox_unique"),
        ]
        indexes = [models.Index(fields=["aggregate_id"], name="%(app_label)s_inbox_aggregate")]

    def __str__(self) -> str:
        return f"{self.consumer} {self.event_id}"


class AbstractDeadLetter(models.Model):
    """A message a consumer gave up on: malformed, or failed on its last delivery.

    One row per (consumer, stream, stream sequence), whichever path saw it first (the handler's
    last attempt or JetStream's MAX_DELIVERIES advisory). Ops redeliver it (a new event id that
    records the original) or discard it.
    """

    class Status(models.TextChoices):
        OPEN = "OPEN"
        REDELIVERED = "REDELIVERED"
        DISCARDED = "DISCARDED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consumer = models.CharField(max_length=100)
    stream = models.CharField(max_length=64)
    stream_sequence = models.BigIntegerField()
    subject = models.CharField(max_length=200)
    event_id = models.CharField(max_length=100, blank=True, default="")
    aggregate_id = models.CharField(max_length=64, blank=True, default="")
    payload = models.TextField(help_text="The message body as received (it may not even be JSON).")
    error = models.TextField()
    deliveries = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=clock.now)
    last_failed_at = models.DateTimeField(default=clock.now)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    resolution_note = models.CharField(max_length=500, blank=True, default="")
    redelivered_event_id = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        abstract = True
        ordering = ["-last_failed_at"]
        constraints = [
            models.UniqueConstraint(fields=["consumer", "stream", "stream_sequence"],
                                    name="%(app_label)s_deadletter_unique"),
        ]
        indexes = [models.Index(fields=["aggregate_id"], name="%(app_label)s_deadletter_aggregate")]

    def __str__(self) -> str:
        return f"{self.subject} #{self.stream_sequence} ({self.consumer}, {self.status})"
