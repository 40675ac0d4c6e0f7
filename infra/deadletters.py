"""Dead letters: messages a consumer gave up on, kept with the reason until ops act on them.

`dead_letter_record` is idempotent per (consumer, stream, stream sequence): the handler's last
attempt and JetStream's MAX_DELIVERIES advisory may both report the same message; the first
creates the row, the handler's report refreshes the failure details, nothing is recorded twice.
`dead_letter_redeliver` republishes the original message under a new event id (that records
the original in `redeliveredFrom`) through the service's outbox; `dead_letter_discard` closes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import uuid

from django.apps import apps
from django.db import connections, router, transaction

from a4co import clock
from a4co.errors import ApplicationError, NotFoundError
from infra.outbox import outbox_append_copy

log = logging.getLogger(__name__)
SERVICES = ("orders", "inventory", "payments")


class DeadLetterStateError(ApplicationError):
    pass


@dataclasses.dataclass(frozen=True)
class FailedDelivery:
    consumer: str
    stream: str
    stream_sequence: int
    subject: str
    data: bytes
    event_id: str
    deliveries: int
    error: str


def _aggregate_of(data: bytes) -> str:
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return ""
    return str(payload.get("orderId", ""))[:64] if isinstance(payload, dict) else ""


def _text(value: str) -> str:
    """What PostgreSQL text can hold: a hostile message may carry NUL characters or lone surrogates
    (from JSON escapes); they become U+FFFD and "?" so that the dead letter is kept all the same."""
    return value.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "\ufffd")


def dead_letter_record(model_label: str, failed: FailedDelivery, *, refresh: bool = True) -> bool:
    """Record the failed delivery in `model_label`'s table; True if this call created the row.

    With `refresh`, an existing row gets the newer error, delivery count and failure time.
    """
    model = apps.get_model(model_label)
    alias = router.db_for_write(model)
    now = clock.now()
    connection = connections[alias]
    table = connection.ops.quote_name(model._meta.db_table)
    on_conflict = ("UPDATE SET error = EXCLUDED.error, last_failed_at = EXCLUDED.last_failed_at, "
                   f"deliveries = GREATEST({table}.deliveries, EXCLUDED.deliveries)") if refresh else "NOTHING"
    with transaction.atomic(using=alias, durable=True), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, consumer, stream, stream_sequence, subject, event_id, aggregate_id, payload,"
            " error, deliveries, first_failed_at, last_failed_at, status, resolved_by, resolution_note,"
            " redelivered_event_id) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " 'OPEN', '', '', '')"
            f" ON CONFLICT (consumer, stream, stream_sequence) DO {on_conflict} RETURNING (xmax = 0)",
            [failed.consumer, failed.stream, failed.stream_sequence, _text(failed.subject)[:200],
             _text(failed.event_id)[:100], _text(_aggregate_of(failed.data)),
             _text(failed.data.decode("utf-8", errors="replace")), _text(failed.error), failed.deliveries, now, now])
        row = cursor.fetchone()
    created = bool(row and row[0])
    if created:
        log.error("dead letter consumer=%s subject=%s eventId=%s seq=%s deliveries=%s: %s", failed.consumer,
                  failed.subject, failed.event_id, failed.stream_sequence, failed.deliveries, failed.error)
    return created


def dead_letter_models() -> list:
    return [apps.get_model(service, "DeadLetter") for service in SERVICES]


def dead_letter_find(dead_letter_id: str):
    """The dead letter with this id, from whichever service database holds it (NotFoundError)."""
    try:
        uuid.UUID(str(dead_letter_id))
    except ValueError:
        raise NotFoundError(f"no dead letter {dead_letter_id}") from None
    for model in dead_letter_models():
        found = model.objects.filter(id=dead_letter_id).first()
        if found is not None:
            return found
    raise NotFoundError(f"no dead letter {dead_letter_id}")


def dead_letter_redeliver(*, dead_letter_id: str, by: str) -> str:
    """Republish an OPEN dead letter under a new event id; returns that id.

    Raises DeadLetterStateError if it is not OPEN or its payload is not a JSON object (such a
    message can only be discarded).
    """
    dead = dead_letter_find(dead_letter_id)
    model = type(dead)
    alias = router.db_for_write(model)
    with transaction.atomic(using=alias, durable=True):
        dead = model.objects.using(alias).select_for_update().get(id=dead.id)
        if dead.status != model.Status.OPEN:
            raise DeadLetterStateError(f"dead letter {dead.id} is {dead.status}, not OPEN")
        try:
            payload = json.loads(dead.payload)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise DeadLetterStateError(f"dead letter {dead.id} is not a JSON object; it can only be discarded")
        outbox = apps.get_model(model._meta.app_label, "OutboxMessage")
        new_id = outbox_append_copy(outbox, dead.subject, payload, aggregate_id=dead.aggregate_id,
                                    redeliveredFrom=dead.event_id or f"{dead.stream}#{dead.stream_sequence}")
        dead.status = model.Status.REDELIVERED
        dead.redelivered_event_id = str(new_id)
        dead.resolved_at = clock.now()
        dead.resolved_by = by[:150]
        dead.save(using=alias)
    log.info("dead letter redelivered id=%s as eventId=%s by=%s", dead.id, new_id, by)
    return str(new_id)


def dead_letter_discard(*, dead_letter_id: str, by: str, note: str = "") -> None:
    """Close an OPEN dead letter without redelivering it. Raises DeadLetterStateError otherwise."""
    dead = dead_letter_find(dead_letter_id)
    model = type(dead)
    alias = router.db_for_write(model)
    with transaction.atomic(using=alias, durable=True):
        updated = model.objects.using(alias).filter(id=dead.id, status=model.Status.OPEN).update(
            status=model.Status.DISCARDED, resolved_at=clock.now(), resolved_by=by[:150],
            resolution_note=note[:500])
    if not updated:
        raise DeadLetterStateError(f"dead letter {dead.id} is {dead.status}, not OPEN")
    log.info("dead letter discarded id=%s by=%s note=%s", dead.id, by, note)
