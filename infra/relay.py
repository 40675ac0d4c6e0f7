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
- Outboxes that live in one database (a4co.routers.same_database; the devstack's three) are
  drained together: one transaction claims the pending rows of all of them, one publish call
  sends them, one statement marks them. A wake that names several outboxes costs one
  transaction, not one each; each outbox keeps its own order and its own batch limit.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import connections, router, transaction

from a4co import clock
from a4co.db import sql_array
from a4co.routers import same_database
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
    """
    return outbox_relay_batch_together([model], batch_size=batch_size, streams=streams)[model]


def outbox_relay_batch_together(models: Sequence, *, batch_size: int,
                                streams: Sequence[nats_bus.StreamSpec] = STREAMS) -> dict:
    """Publish one batch of the oldest pending rows of each outbox of `models`, all in one database
    (see `outbox_groups`), in one transaction: one SELECT claims at most `batch_size` rows of
    each, one publish call sends them all (an outbox's rows in its order; the outboxes' rows of
    one stream one outbox after the other), one UPDATE marks them. Returns each model's
    RelayStats (`batches` 1 for an outbox that had rows). If anything raises, the transaction
    rolls back and every claimed row stays pending.

    Hot path: rows are read as raw tuples of text and numbers (the payload as the JSON text
    PostgreSQL already has, no UUID or datetime objects built) and marked in one statement whose
    arrays are passed as single literals, so the cost per message is a few microseconds of Python;
    a wake that names several outboxes costs one transaction, not one each.
    """
    alias = router.db_for_write(models[0])
    connection = connections[alias]
    tables = [connection.ops.quote_name(model._meta.db_table) for model in models]
    stats = {model: RelayStats() for model in models}
    with transaction.atomic(using=alias, durable=True), connection.cursor() as cursor:
        cursor.execute(_claim_statement(tables), [batch_size] * len(tables))
        rows = cursor.fetchall()
        if not rows:
            return stats
        items = [(subject, payload.encode(), row_id) for _outbox, row_id, subject, payload, _created in rows]
        try:
            results = nats_bus.publish_batch_bypassing_outbox(items, streams=streams)
        except nats_bus.NatsUnavailableError as exc:
            results = [nats_bus.PublishResult(row[1], ok=False, error=str(exc)) for row in rows]
        now = clock.now()
        published: dict[int, list] = {}
        failed: dict[int, list] = {}
        for row, result in zip(rows, results, strict=True):
            (published if result.ok else failed).setdefault(row[0], []).append((row, result))
        if published:
            marks = [(tables[outbox], pairs) for outbox, pairs in published.items()]
            cursor.execute(*_published_statement(marks, now))
        for outbox, pairs in failed.items():
            cursor.execute(
                f"UPDATE {tables[outbox]} AS o SET attempts = o.attempts + 1, last_error = v.error"
                " FROM unnest(%s::text::uuid[], %s::text[]) AS v(id, error) WHERE o.id = v.id",
                [sql_array(row[1] for row, _ in pairs), sql_array(result.error[:2000] for _, result in pairs)])
            log.warning("relay: %d of %d %s rows not published: %s", len(pairs),
                        len(pairs) + len(published.get(outbox, ())), models[outbox]._meta.label, pairs[0][1].error)
        for outbox, model in enumerate(models):
            done, lost = published.get(outbox, []), failed.get(outbox, [])
            if done or lost:
                stats[model] = RelayStats(published=len(done), failed=len(lost), batches=1)
                metrics.relay_batch_observe(model, published_created_epochs=[row[4] for row, _ in done],
                                            failed=len(lost), now=now)
    return stats


def _claim_statement(tables: Sequence[str]) -> str:
    """The SELECT that claims (locks, skipping rows other relays hold) the oldest pending rows of
    each table, at most one LIMIT parameter each: rows (outbox index, id, subject, payload,
    created_at epoch), each outbox's in its order."""
    columns = "id::text, subject, payload::text, extract(epoch FROM created_at)::float8"
    claim = " WHERE published_at IS NULL ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED"
    if len(tables) == 1:
        return f"SELECT 0, {columns} FROM {tables[0]}{claim}"
    ctes = ", ".join(f"c{index} AS (SELECT id, subject, payload, created_at FROM {table}{claim})"
                     for index, table in enumerate(tables))
    selects = " UNION ALL ".join(f"SELECT {index}, {columns} FROM c{index}" for index in range(len(tables)))
    return f"WITH {ctes} SELECT * FROM ({selects}) AS claimed ORDER BY 1, 5"


def _published_statement(marks: Sequence[tuple[str, list]], now) -> tuple[str, list]:
    """One statement marking each (table, [(row, result)]) published, with its stream sequence."""
    updates, params = [], []
    for table, pairs in marks:
        updates.append(f"UPDATE {table} AS o SET published_at = %s, stream_sequence = v.seq"
                       " FROM unnest(%s::text::uuid[], %s::text::bigint[]) AS v(id, seq) WHERE o.id = v.id")
        params += [now, sql_array(row[1] for row, _ in pairs),
                   sql_array(result.sequence for _, result in pairs)]
    if len(updates) == 1:
        return updates[0], params
    ctes = ", ".join(f"u{index} AS ({update})" for index, update in enumerate(updates))
    return f"WITH {ctes} SELECT 1", params


def outbox_relay_drain(*, batch_size: int | None = None, max_batches: int = 1000,
                       streams: Sequence[nats_bus.StreamSpec] = STREAMS, models: Sequence | None = None) -> RelayStats:
    """Drain every outbox (or those of `models`) until empty, a batch fails, or `max_batches` batches
    ran. Outboxes in one database are drained together (outbox_relay_batch_together)."""
    batch_size = batch_size or settings.RELAY_BATCH_SIZE
    total = RelayStats()
    for group in outbox_groups(outbox_models() if models is None else models):
        for _ in range(max_batches):
            stats = outbox_relay_batch_together(group, batch_size=batch_size, streams=streams)
            for one in stats.values():
                total += one
            # An outbox is done when nothing more was claimable (a short batch: drained as of its
            # SELECT, or the rest is locked by another relay) or a publish failed (NATS trouble: the
            # next run retries). A row committed after that SELECT kicks the relay again itself,
            # so asking once more would only cost an empty transaction per wake.
            group = [model for model, one in stats.items() if not one.failed and one.published == batch_size]
            if not group:
                break
    return total


def outbox_groups(models: Sequence) -> list[list]:
    """`models` grouped by the database their outboxes are in (aliases a4co.routers.same_database
    says share one), in order."""
    groups: list[list] = []
    for model in models:
        alias = router.db_for_write(model)
        for group in groups:
            if same_database(router.db_for_write(group[0]), alias):
                group.append(model)
                break
        else:
            groups.append([model])
    return groups
