"""WSGI entry point (gunicorn a4co.wsgi:application)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a4co.settings.dev")
application = get_wsgi_application()
