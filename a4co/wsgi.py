"""WSGI entry point (gunicorn a4co.wsgi:application).

The URL configuration, and with it every view, serializer and admin module, is loaded here
rather than on the first request, and what startup allocated is then left out of garbage
collections (a4co.heap): each gunicorn worker imports this module after it forks.
"""
import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from a4co.heap import heap_freeze_startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a4co.settings.dev")
application = get_wsgi_application()
import_module(settings.ROOT_URLCONF)
heap_freeze_startup()
