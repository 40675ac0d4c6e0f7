"""The outbox relay: pending outbox rows -> JetStream, at least once, in commit-independent order.

Contract:
- Rows are claimed with `SELECT ... FOR UPDATE SKIP LOCKED`, so several relays (threads,
  processes, machines) drain the same outbox without publishing a row twice concurrently.
- A row is marked published only after the stream acknowledged it: the commit PubAck of the
  atomic batch it went in, or its own PubAck (a duplicate PubAck counts: the stream already
  has it). Its stream sequence is recorded with it. The lock is held while publishing, so a
  crash mid-batch leaves the rows pending and the next run re-publishes them; JetStream's
  duplicate window (Nats-Msg-Id = row id) and the consumers' inboxes make that harmless (an
  atomic batch holding such a row is refused whole and re-sent message by message).
- Rows of one stream are stored in outbox order: the claimed rows are grouped by stream
  (infra/streams.py) and each group sent in order, as atomic batches where the server allows.
- A failed publish leaves the row pending with `attempts` + 1 and `last_error`; so does, on
  the atomic path, every later row of the same stream: it is not sent after a failed batch.
- Pending rows are found by state, not by a high-water mark, so a row committed late by a long
  transaction is never skipped.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import connections, router, transaction

from a4co import clock
from infra import metrics
from infra import nats as nats_bus
from infra.outbox import outbox_models
from infra.streams import STREAMS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RelayStats:
    published: int = 0
    failed: int = 0
    batches: int = 0

    def __iadd__(self, other: RelayStats) -> RelayStats:
        self.published += other.published
        self.failed += other.failed
        self.batches += other.batches
        return self


def outbox_relay_batch(model, *, batch_size: int, streams: Sequence[nats_bus.StreamSpec] = STREAMS) -> RelayStats:
    """Publish one batch of `model`'s oldest pending rows. Returns what happened.

    `streams` says which stream each subject goes to (a subject of none is still published, one
    message at a time).

    Hot path: rows are read as raw tuples of text and numbers (the payload as the JSON text
    PostgreSQL already has, no UUID or datetime objects built) and marked in one UPDATE whose
    arrays are passed as single literals, so the cost per message is a few microseconds of Python.
    """
    alias = router.db_for_write(model)
    connection = connections[alias]
    table = connection.ops.quote_name(model._meta.db_table)
    stats = RelayStats()
    with transaction.atomic(using=alias, durable=True), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id::text, subject, payload::text, extract(epoch FROM created_at)::float8 FROM {table}"
            " WHERE published_at IS NULL ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED", [batch_size])
        rows = cursor.fetchall()
        if not rows:
            return stats
        stats.batches = 1
        items = [(subject, payload.encode(), row_id) for row_id, subject, payload, _created in rows]
        try:
            results = nats_bus.publish_batch_bypassing_outbox(items, streams=streams)
        except nats_bus.NatsUnavailableError as exc:
            results = [nats_bus.PublishResult(row[0], ok=False, error=str(exc)) for row in rows]
        now = clock.now()
        published = [(row, result) for row, result in zip(rows, results, strict=True) if result.ok]
        failed = [(row, result) for row, result in zip(rows, results, strict=True) if not result.ok]
        if published:
            cursor.execute(
                f"UPDATE {table} AS o SET published_at = %s, stream_sequence = v.seq"
                " FROM unnest(%s::text::uuid[], %s::text::bigint[]) AS v(id, seq) WHERE o.id = v.id",
                [now, _array_literal(row[0] for row, _ in published),
                 _array_literal(str(result.sequence) for _, result in published)])
        if failed:
            cursor.execute(
                f"UPDATE {table} AS o SET attempts = o.attempts + 1, last_error = v.error"
                " FROM unnest(%s::uuid[], %s::text[]) AS v(id, error) WHERE o.id = v.id",
                [[row[0] for row, _ in failed], [result.error[:2000] for _, result in failed]])
            log.warning("relay: %d of %d %s rows not published: %s", len(failed), len(rows),
                        model._meta.label, failed[0][1].error)
        stats.published, stats.failed = len(published), len(failed)
        metrics.relay_batch_observe(model, published_created_epochs=[row[3] for row, _ in published],
                                    failed=len(failed), now=now)
    return stats


def _array_literal(values) -> str:
    """A PostgreSQL array literal of plain tokens (UUID texts, integers: nothing to escape).

    One text parameter instead of a list psycopg would dump element by element."""
    return "{" + ",".join(values) + "}"


def outbox_relay_drain(*, batch_size: int | None = None, max_batches: int = 1000,
                       streams: Sequence[nats_bus.StreamSpec] = STREAMS, models: Sequence | None = None) -> RelayStats:
    """Drain every outbox (or those of `models`) until empty, a batch fails, or `max_batches` batches ran."""
    batch_size = batch_size or settings.RELAY_BATCH_SIZE
    total = RelayStats()
    for model in outbox_models() if models is None else models:
        for _ in range(max_batches):
            stats = outbox_relay_batch(model, batch_size=batch_size, streams=streams)
            total += stats
            # Stop when nothing more was claimable (a short batch: drained as of its SELECT, or
            # the rest is locked by another relay) or a publish failed (NATS trouble: the next
            # run retries). A row committed after that SELECT kicks the relay again itself, so
            # asking once more would only cost an empty transaction per wake.
            if stats.failed or stats.published < batch_size:
                break
    return total
