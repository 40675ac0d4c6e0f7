"""The outbox relay: pending outbox rows -> JetStream, at least once, in commit-independent order.

Contract:
- Rows are claimed with `SELECT ... FOR UPDATE SKIP LOCKED`, so several relays (threads,
  processes, machines) drain the same outbox without publishing a row twice concurrently.
- A row is marked published only after its PubAck (a duplicate PubAck counts: the stream
  already has it). The lock is held while publishing, so a crash mid-batch leaves the rows
  pending and the next run re-publishes them; JetStream's duplicate window (Nats-Msg-Id =
  row id) and the consumers' inboxes make that harmless.
- A failed publish leaves the row pending with `attempts` + 1 and `last_error`.
- Pending rows are found by state, not by a high-water mark, so a row committed late by a long
  transaction is never skipped.
"""
from __future__ import annotations

import dataclasses
import json
import logging

from django.conf import settings
from django.db import router, transaction

from a4co import clock
from infra import nats as nats_bus
from infra.outbox import outbox_models

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


def outbox_relay_batch(model, *, batch_size: int) -> RelayStats:
    """Publish one batch of `model`'s oldest pending rows. Returns what happened."""
    alias = router.db_for_write(model)
    stats = RelayStats()
    with transaction.atomic(using=alias, durable=True):
        rows = list(
            model.objects.using(alias)
            .select_for_update(skip_locked=True)
            .filter(published_at__isnull=True)
            .order_by("created_at")
            .only("id", "subject", "payload", "attempts")[:batch_size]
        )
        if not rows:
            return stats
        stats.batches = 1
        items = [(row.subject, json.dumps(row.payload, separators=(",", ":")).encode(), str(row.id))
                 for row in rows]
        try:
            results = nats_bus.publish_batch_bypassing_outbox(items)
        except nats_bus.NatsUnavailableError as exc:
            results = [nats_bus.PublishResult(str(row.id), ok=False, error=str(exc)) for row in rows]
        now = clock.now()
        published, failed = [], []
        for row, result in zip(rows, results, strict=True):
            if result.ok:
                row.published_at = now
                row.stream_sequence = result.sequence
                published.append(row)
            else:
                row.attempts += 1
                row.last_error = result.error[:2000]
                failed.append(row)
        if published:
            model.objects.using(alias).bulk_update(published, ["published_at", "stream_sequence"])
        if failed:
            model.objects.using(alias).bulk_update(failed, ["attempts", "last_error"])
            log.warning("relay: %d of %d %s rows not published: %s", len(failed), len(rows),
                        model._meta.label, failed[0].last_error)
        stats.published, stats.failed = len(published), len(failed)
    return stats


def outbox_relay_drain(*, batch_size: int | None = None, max_batches: int = 1000) -> RelayStats:
    """Drain every outbox until empty, a batch fails, or `max_batches` batches ran."""
    batch_size = batch_size or settings.RELAY_BATCH_SIZE
    total = RelayStats()
    for model in outbox_models():
        for _ in range(max_batches):
            stats = outbox_relay_batch(model, batch_size=batch_size)
            total += stats
            if stats.failed or stats.published < batch_size:
                break
    return total
