"""Writing to outboxes and inboxes: the two halves of exactly-once effects over JetStream.

`outbox_append` must be called inside the service's transaction (same alias as the outbox
model); it raises `OutboxUsageError` otherwise, because an event written outside the state
change's transaction could be lost or sent for a change that rolled back. After commit the
relay is kicked (a Celery task); if the kick is lost, Celery beat's relay run picks the row
up within about a second.
"""
from __future__ import annotations

import logging
import uuid

import redis
from django.apps import apps
from django.conf import settings
from django.db import connections, router, transaction

from a4co import clock
from infra.messages import Message, message_envelope

log = logging.getLogger(__name__)


class OutboxUsageError(RuntimeError):
    pass


class DuplicateDeliveryError(Exception):
    """The inbox already holds (consumer, event id): the message was handled before."""


def outbox_models() -> list:
    return [apps.get_model(label) for label in settings.OUTBOX_MODELS]


def outbox_append(model, message: Message, *, aggregate_id: str) -> uuid.UUID:
    """Add `message` to the outbox table `model` in the current transaction; returns its event id."""
    event_id, now = uuid.uuid4(), clock.now()
    return _outbox_insert(model, message.SUBJECT, message_envelope(message, event_id=str(event_id), occurred_at=now),
                          event_id=event_id, now=now, aggregate_id=aggregate_id)


def outbox_append_copy(model, subject: str, payload: dict, *, aggregate_id: str, **extra) -> uuid.UUID:
    """Re-send a wire object under a new event id (envelope refreshed, `extra` fields added).

    For redelivering dead letters; same transaction rule as outbox_append.
    """
    event_id, now = uuid.uuid4(), clock.now()
    wire = {**payload, **extra, "eventId": str(event_id), "occurredAt": now.isoformat()}
    return _outbox_insert(model, subject, wire, event_id=event_id, now=now, aggregate_id=aggregate_id)


def _outbox_insert(model, subject: str, wire: dict, *, event_id: uuid.UUID, now, aggregate_id: str) -> uuid.UUID:
    alias = router.db_for_write(model)
    if not connections[alias].in_atomic_block:
        raise OutboxUsageError(f"outbox write ({subject}) outside a transaction on {alias!r}")
    model.objects.using(alias).create(id=event_id, subject=subject, aggregate_id=aggregate_id, payload=wire,
                                      created_at=now)
    _kick_relay_on_commit(alias)
    return event_id


def _kick_relay_on_commit(alias: str) -> None:
    # One kick per outermost transaction is enough: the relay drains every pending row.
    connection = connections[alias]
    outermost = connection.atomic_blocks[0] if connection.atomic_blocks else None
    if outermost is not None and getattr(outermost, "_a4co_relay_kick", False):
        return
    if outermost is not None:
        outermost._a4co_relay_kick = True
    transaction.on_commit(relay_kick, using=alias)


KICK_FLAG = "a4co:relay:kick-pending"


def _kick_flags():
    """The Redis client used to coalesce kicks (None when the broker is not Redis)."""
    global _flags
    if _flags is None:
        url = settings.CELERY_BROKER_URL
        _flags = redis.Redis.from_url(url, socket_timeout=1) if url.startswith(("redis://", "rediss://")) else False
    return _flags or None


_flags = None


def relay_kick() -> None:
    """Ask a Celery worker to drain the outboxes now. Never raises: beat is the safety net.

    Kicks are coalesced: a kick only sends a task when none is pending (a Redis flag the relay
    task clears before it reads the outboxes), so a burst of commits costs one relay run, and no
    commit is missed (a commit that finds the flag set happened before the pending run's read).
    """
    from infra.tasks import outbox_relay

    try:
        flags = _kick_flags()
        if flags is not None and not flags.set(KICK_FLAG, 1, nx=True, px=settings.RELAY_KICK_FLAG_TTL_MS):
            return
        outbox_relay.apply_async(retry=False)
    except Exception:  # the broker being down must not fail a committed request
        log.warning("relay kick failed; beat will relay within %ss", settings.RELAY_BEAT_SECONDS,
                    exc_info=True)


def relay_kick_taken() -> None:
    """Called by the relay before it reads the outboxes: later commits must kick again."""
    flags = _kick_flags()
    if flags is not None:
        try:
            flags.delete(KICK_FLAG)
        except redis.RedisError:
            log.warning("could not clear the relay kick flag; it expires by itself", exc_info=True)


def inbox_record(model, *, consumer: str, event_id: str, subject: str, aggregate_id: str,
                 deliveries: int) -> None:
    """Record (consumer, event_id) in the current transaction.

    Raises DuplicateDeliveryError if the pair is already there (committed by an earlier
    delivery, or being committed by a concurrent one: the insert waits for it).
    """
    alias = router.db_for_write(model)
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise OutboxUsageError("inbox_record outside a transaction")
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (consumer, event_id, subject, aggregate_id, deliveries, received_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (consumer, event_id) DO NOTHING RETURNING id",
            [consumer, event_id, subject, aggregate_id, deliveries, clock.now()],
        )
        if cursor.fetchone() is None:
            raise DuplicateDeliveryError(f"{consumer} already handled {event_id}")
