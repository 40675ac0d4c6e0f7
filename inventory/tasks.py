"""Celery interface onto the reservation expiry sweep."""
from celery import shared_task

from inventory.services import reservations_expire_sweep


@shared_task(ignore_result=True)
def reservations_expire_sweep_task() -> int:
    return reservations_expire_sweep()
