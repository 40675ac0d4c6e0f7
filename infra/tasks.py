"""Celery interfaces onto the relay."""
from celery import shared_task

from infra.outbox import relay_kick_taken
from infra.relay import outbox_relay_drain


@shared_task(ignore_result=True, acks_late=False)
def outbox_relay() -> dict:
    """Drain every outbox to JetStream (kicked on commit, and by beat as a safety net)."""
    relay_kick_taken()
    stats = outbox_relay_drain()
    return {"published": stats.published, "failed": stats.failed}
