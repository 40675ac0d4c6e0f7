"""The Celery app. Tasks are thin interfaces onto services (infra.tasks, inventory.tasks, saga.tasks)."""
import os

from celery import Celery
from celery.signals import task_prerun, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a4co.settings.dev")

app = Celery("a4co")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def _close_stale_connections(**_kwargs) -> None:
    # Celery's Django fixup closes every database connection around every task unless
    # CELERY_DB_REUSE_MAX is set (settings/base.py sets it): a relay run every second on three
    # aliases then cost three fresh PostgreSQL backends. With reuse on, connections live by
    # CONN_MAX_AGE like in the web and consumer processes, and a broken one is replaced here.
    from a4co.db import connections_close_stale

    connections_close_stale()


@worker_process_init.connect
def _freeze_startup_heap(**_kwargs) -> None:
    # Each pool process: load what the relay runs with, then leave it out of garbage
    # collections (a4co.heap). The relay worker otherwise paused for full collections.
    import infra.relay  # noqa: F401
    from a4co.heap import heap_freeze_startup

    heap_freeze_startup()
