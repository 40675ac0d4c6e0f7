"""Celery interfaces onto the relay."""
from celery import shared_task

from infra.outbox import outbox_relay_run


@shared_task(ignore_result=True, acks_late=False)
def outbox_relay(kicked: bool = False) -> dict:
    """Drain every outbox to JetStream, then keep relaying for a moment (kicked on commit, and
    by beat as a safety net; see infra.outbox for the protocol)."""
    return {"published": outbox_relay_run(kicked=kicked)}
