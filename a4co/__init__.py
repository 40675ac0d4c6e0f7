"""The a4co project package: settings, Celery app, URL wiring and cross-cutting helpers."""
from a4co.celery import app as celery_app

__all__ = ("celery_app",)
