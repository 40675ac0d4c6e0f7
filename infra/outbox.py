"""Writing to outboxes and inboxes: the two halves of exactly-once effects over JetStream.

`outbox_append` must be called inside the service's transaction (same alias as the outbox
model); it raises `OutboxUsageError` otherwise, because an event written outside the state
change's transaction could be lost or sent for a change that rolled back. After commit the
relay is kicked (a Celery task); if the kick is lost, Celery beat's relay run picks the row
up within about a second.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
import uuid

import redis
from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, connections, router, transaction

from a4co import clock
from a4co.db import sql_execute, statement_defer
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


def outbox_append_statement(model, message: Message, *, aggregate_id: str, when: str) -> tuple[str, list]:
    """The INSERT that adds `message` to outbox `model` only if the WITH query named `when`, in the
    same statement, returns a row: for a caller that writes a conditional change and the event
    it causes in one statement. The caller runs it in the current transaction; the relay is
    kicked when that commits."""
    event_id, now = uuid.uuid4(), clock.now()
    return _outbox_statement(model, message.SUBJECT, message_envelope(message, event_id=str(event_id), occurred_at=now),
                             event_id=event_id, now=now, aggregate_id=aggregate_id, when=when)[1]


def _outbox_statement(model, subject: str, wire: dict, *, event_id: uuid.UUID, now, aggregate_id: str,
                      when: str = "") -> tuple[str, tuple[str, list]]:
    """(alias, the INSERT of one outbox row: its values, or, with `when`, a SELECT of them from that
    WITH query); the relay is kicked when the caller's transaction commits.

    Hot path (every handled message writes one or two): a plain INSERT instead of ORM create; the
    payload is serialised as JSONField would (json.dumps, no custom encoder).
    """
    alias = router.db_for_write(model)
    if not connections[alias].in_atomic_block:
        raise OutboxUsageError(f"outbox write ({subject}) outside a transaction on {alias!r}")
    _kick_relay_on_commit(alias, model._meta.label)
    source = f"SELECT %s, %s, %s, %s::jsonb, %s, 0, '' FROM {when}" if when else \
        "VALUES (%s, %s, %s, %s::jsonb, %s, 0, '')"
    return alias, (f"INSERT INTO {connections[alias].ops.quote_name(model._meta.db_table)}"
                   f" (id, subject, aggregate_id, payload, created_at, attempts, last_error) {source}",
                   [event_id, subject, aggregate_id, json.dumps(wire), now])


def _outbox_insert(model, subject: str, wire: dict, *, event_id: uuid.UUID, now, aggregate_id: str) -> uuid.UUID:
    # Sent with the transaction's next write when the caller batches them (a4co.db.writes_deferred).
    alias, statement = _outbox_statement(model, subject, wire, event_id=event_id, now=now, aggregate_id=aggregate_id)
    if not statement_defer(alias, statement):
        sql_execute(alias, statement)
    return event_id


def _kick_relay_on_commit(alias: str, label: str) -> None:
    # One kick per outermost transaction and outbox is enough: the relay drains every pending row.
    connection = connections[alias]
    outermost = connection.atomic_blocks[0] if connection.atomic_blocks else None
    if outermost is not None:
        kicked = outermost.__dict__.setdefault("_a4co_relay_kicks", set())
        if label in kicked:
            return
        kicked.add(label)
    transaction.on_commit(functools.partial(relay_kick_soon, label), using=alias)


# --- Waking the relay ---------------------------------------------------------------------------
# Contract (Redis keys, all with a TTL so that a dead relay holds nothing for long):
# - KICK_FLAG is set while a relay is running or about to: a kicked task on its way ("1") or a
#   relay that owns the outboxes for a while (its token). A commit that sets it (NX) sends one
#   Celery task; a commit that finds it set pushes its outbox's label onto WAKE_LIST instead.
# - The owner drains, then lingers for RELAY_LINGER_SECONDS: it pops WAKE_LIST and drains the
#   outboxes named there, refreshing the flag as it goes. So under load there is one Celery task
#   per RELAY_LINGER_SECONDS instead of one per commit, and a commit is relayed without a task
#   round trip.
# - Nothing is missed: a commit that found the flag set committed before the owner's next
#   refresh; the owner, before it stops, gives the flag up and then drains every outbox once
#   more, which sees every commit that found the flag still held. Commits after that kick again.
# - Beat's run (the safety net for a lost kick or a dead owner) becomes the owner when nobody
#   is; otherwise it drains once and leaves.

KICK_FLAG = "a4co:relay:kick-pending"
WAKE_LIST = "a4co:relay:wake"
_KICK_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 0
"""
# Keep the flag while it is ours (or expired and nobody else's yet); returns what it was.
_REFRESH_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return current
"""
# Give the flag up only while it is still ours (a kicked task may have taken it over).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _kick_flags():
    """The Redis client used to coalesce kicks (None when the broker is not Redis)."""
    global _flags
    if _flags is None:
        url = settings.CELERY_BROKER_URL
        _flags = redis.Redis.from_url(url, socket_timeout=1) if url.startswith(("redis://", "rediss://")) else False
    return _flags or None


_flags = None


def relay_kick(label: str = "") -> None:
    """Ask for the outbox `label` (all when "") to be relayed now. Never raises: beat is the
    safety net.

    Sends a Celery task only when no relay is running or pending (see the contract above);
    otherwise wakes the running one.
    """
    from infra.tasks import outbox_relay

    try:
        flags = _kick_flags()
        if flags is not None and not flags.eval(_KICK_SCRIPT, 2, KICK_FLAG, WAKE_LIST,
                                                settings.RELAY_KICK_FLAG_TTL_MS, label):
            return
        outbox_relay.apply_async(kwargs={"kicked": True}, retry=False)
    except Exception:  # the broker being down must not fail a committed request
        log.warning("relay kick failed; beat will relay within %ss", settings.RELAY_BEAT_SECONDS,
                    exc_info=True)


class _Kicker:
    """Sends this process's relay kicks from one thread, so that the commits of the same moment
    (a web worker's or a consumer's threads) share one Redis call per outbox instead of one each.

    Every label requested before a round takes its label set is kicked by that round, which
    starts after the request, hence after the commit that made it. After a round the thread
    rests RELAY_KICK_COALESCE_SECONDS: a commit after a quiet spell is kicked at once, the
    commits of a busy moment wait at most that long and share the next round. A kick lost with
    the process (it exits before its round) is covered by beat's relay run, as a failed kick is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: set[str] = set()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="a4co-relay-kicker", daemon=True).start()

    def request(self, label: str) -> None:
        with self._lock:
            self._labels.add(label)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()  # before taking the set: a request after this sets it again
            with self._lock:
                labels, self._labels = self._labels, set()
            for label in sorted(labels):
                relay_kick(label)
            time.sleep(settings.RELAY_KICK_COALESCE_SECONDS)


_kicker: _Kicker | None = None
_kicker_lock = threading.Lock()
# A forked child (gunicorn and Celery workers) starts its own kicker thread when it needs one.
os.register_at_fork(after_in_child=lambda: globals().update(_kicker=None, _kicker_lock=threading.Lock()))


def relay_kick_soon(label: str = "") -> None:
    """relay_kick(label) from this process's kicker thread, coalesced with the other commits of
    the moment (see _Kicker); at once, in this thread, when RELAY_KICK_COALESCE_SECONDS is 0."""
    global _kicker
    if settings.RELAY_KICK_COALESCE_SECONDS <= 0:
        relay_kick(label)
        return
    if _kicker is None:
        with _kicker_lock:
            if _kicker is None:
                _kicker = _Kicker()
    _kicker.request(label)


def outbox_relay_run(*, kicked: bool) -> int:
    """One relay task: drain the outboxes, then, as the owner, keep relaying what commits wake it
    for during RELAY_LINGER_SECONDS. Returns the number of rows published.

    `kicked`: sent by relay_kick (takes over the flag its kicker set); otherwise (beat) it owns
    the relay only if nobody does, and else drains once. Without Redis it drains once.
    """
    from infra.relay import outbox_relay_drain

    flags = _kick_flags()
    linger = settings.RELAY_LINGER_SECONDS
    token = uuid.uuid4().hex
    ttl = settings.RELAY_KICK_FLAG_TTL_MS
    try:
        owner = flags is not None and linger > 0 and bool(
            flags.set(KICK_FLAG, token, px=ttl) if kicked else flags.set(KICK_FLAG, token, px=ttl, nx=True))
    except redis.RedisError:
        log.warning("relay: Redis unavailable, draining once", exc_info=True)
        owner = False
    if not owner:
        return outbox_relay_drain().published
    published = 0
    try:
        flags.delete(WAKE_LIST)  # the first drain covers what they asked for
        published += outbox_relay_drain().published
        models = {model._meta.label: model for model in outbox_models()}
        deadline = time.monotonic() + linger
        refreshed = 0.0
        while (now := time.monotonic()) < deadline:
            # The flag lives `ttl` ms: renewing it every quarter of that is enough (not on every
            # wake, which under a moderate load is one Redis call per message).
            if now - refreshed >= ttl / 4000:
                previous = flags.eval(_REFRESH_SCRIPT, 1, KICK_FLAG, token, ttl)
                if previous not in (token.encode(), None):
                    break  # a kicked task took over (our flag had expired): it relays from here
                refreshed = now
            # Block for the first wake, then take every wake queued with it.
            first = flags.blpop([WAKE_LIST], timeout=min(0.5, ttl / 4000))
            if first is None:
                continue
            labels = {first[1].decode(), *(item.decode() for item in flags.lpop(WAKE_LIST, 1000) or ())}
            wanted = list(models.values()) if "" in labels else [models[x] for x in labels if x in models]
            published += outbox_relay_drain(models=wanted).published
    except redis.RedisError:
        log.warning("relay: Redis failed while lingering; stopping after a last drain", exc_info=True)
    finally:
        with contextlib.suppress(redis.RedisError):
            flags.eval(_RELEASE_SCRIPT, 1, KICK_FLAG, token)
        # After giving the flag up: every commit that found it held is visible now.
        published += outbox_relay_drain().published
    return published


def inbox_record(model, *, consumer: str, event_id: str, subject: str, aggregate_id: str,
                 deliveries: int) -> None:
    """Record (consumer, event_id) in the current transaction.

    Raises DuplicateDeliveryError if the pair is already there (committed by an earlier
    delivery, or being committed by a concurrent one: the insert waits for it). Inside
    `a4co.db.writes_deferred` the row goes out with the transaction's next write instead, and a
    duplicate shows as an IntegrityError on the inbox's unique constraint from that write
    (`inbox_conflict` tells it apart; the transaction is then unusable and must roll back).
    """
    alias = router.db_for_write(model)
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise OutboxUsageError("inbox_record outside a transaction")
    table = connection.ops.quote_name(model._meta.db_table)
    columns = "(consumer, event_id, subject, aggregate_id, deliveries, received_at)"
    values = [consumer, event_id, subject, aggregate_id, deliveries, clock.now()]
    insert = f"INSERT INTO {table} {columns} VALUES (%s, %s, %s, %s, %s, %s)"
    if statement_defer(alias, (insert, values)):
        return
    with connection.cursor() as cursor:
        cursor.execute(insert + " ON CONFLICT (consumer, event_id) DO NOTHING RETURNING id", values)
        if cursor.fetchone() is None:
            raise DuplicateDeliveryError(f"{consumer} already handled {event_id}")


def inbox_conflict(exc: IntegrityError, model) -> bool:
    """True if `exc` is the unique (consumer, event id) constraint of inbox `model` refusing a row."""
    diag = getattr(exc.__cause__, "diag", None)
    return diag is not None and diag.constraint_name == f"{model._meta.app_label}_inbox_unique"
