"""A readable in-process stand-in for relay + JetStream: delivers pending outbox rows to the
handlers of the consumers that subscribe to their subject, through the real `delivery_handle`
(inbox, transactions, handlers). Deterministic, so tests can stop a saga at any step."""
from __future__ import annotations

import json

from a4co import clock
from infra.consumers import Outcome, delivery_handle
from infra.outbox import outbox_models
from infra.streams import ROUTES


def routes_for(subject: str):
    return [route for route in ROUTES if subject in route.consumer.subjects]


def pending_rows(subjects: set[str] | None = None) -> list:
    rows = []
    for model in outbox_models():
        query = model.objects.filter(published_at__isnull=True).order_by("created_at")
        if subjects:
            query = query.filter(subject__in=subjects)
        rows.extend(query)
    return sorted(rows, key=lambda row: row.created_at)


def deliver(row, *, num_delivered: int = 1) -> list[tuple[str, Outcome, str]]:
    """Deliver one outbox row to every subscribed consumer; mark it published."""
    data = json.dumps(row.payload).encode()
    results = []
    for route in routes_for(row.subject):
        outcome, reason = delivery_handle(route, subject=row.subject, data=data, msg_id=str(row.id),
                                          num_delivered=num_delivered)
        results.append((route.name, outcome, reason))
    type(row).objects.filter(id=row.id).update(published_at=clock.now())
    return results


def pump(*, only: set[str] | None = None, max_rounds: int = 50) -> list[tuple[str, str, Outcome, str]]:
    """Deliver pending rows (optionally only some subjects) until none is left."""
    log = []
    for _ in range(max_rounds):
        rows = pending_rows(only)
        if not rows:
            return log
        for row in rows:
            for consumer, outcome, reason in deliver(row):
                log.append((row.subject, consumer, outcome, reason))
    raise AssertionError("pump did not settle")
