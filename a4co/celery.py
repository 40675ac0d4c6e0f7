"""The Celery app. Tasks are thin interfaces onto services (infra.tasks, inventory.tasks, saga.tasks)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a4co.settings.dev")

app = Celery("a4co")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
