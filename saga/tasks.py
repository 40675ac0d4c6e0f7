"""Celery interface onto the saga deadline sweep."""
from celery import shared_task

from saga.services import saga_timeouts_sweep


@shared_task(ignore_result=True)
def saga_timeouts_sweep_task() -> int:
    return saga_timeouts_sweep()
