"""Settings shared by every environment; everything environment-specific comes from variables.

The defaults point at the embedded servers that `make run` starts (see devstack/), so
`.venv/bin/python manage.py ...` in another terminal reaches the same services.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "") or default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-insecure-key-change-me")
DEBUG = False
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_prometheus",
    "infra",
    "orders",
    "saga",
    "inventory",
    "payments",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "a4co.urls"
WSGI_APPLICATION = "a4co.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------------------
# Each service owns an alias: `orders` (orders + saga), `inventory`, `payments`; `default`
# holds auth, admin and sessions. All point at DATABASE_URL unless the per-app variable
# moves that app to a database of its own (no code change: see a4co/routers.py).
DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:15432/a4co")
CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60)


def _database(url: str) -> dict:
    config = dj_database_url.parse(url, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
    config.setdefault("OPTIONS", {})
    return config


DATABASES = {
    "default": _database(DATABASE_URL),
    "orders": _database(env_str("ORDERS_DATABASE_URL", DATABASE_URL)),
    "inventory": _database(env_str("INVENTORY_DATABASE_URL", DATABASE_URL)),
    "payments": _database(env_str("PAYMENTS_DATABASE_URL", DATABASE_URL)),
}
# Which aliases share a physical database, fixed here because the test runner renames
# databases one alias at a time (see a4co/routers.py).
DATABASE_IDENTITIES = {alias: (c["HOST"], str(c["PORT"]), c["NAME"]) for alias, c in DATABASES.items()}
DATABASE_ROUTERS = ["a4co.routers.ServiceRouter"]
# app label -> database alias. Apps not listed live in `default`.
SERVICE_DATABASES = {
    "orders": "orders",
    "saga": "orders",
    "inventory": "inventory",
    "payments": "payments",
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Messaging --------------------------------------------------------------------------
NATS_URL = env_str("NATS_URL", "nats://127.0.0.1:14222")
NATS_CONNECT_TIMEOUT_SECONDS = env_int("NATS_CONNECT_TIMEOUT_SECONDS", 5)
JETSTREAM_REPLICAS = env_int("JETSTREAM_REPLICAS", 1)
JETSTREAM_MAX_AGE_SECONDS = env_int("JETSTREAM_MAX_AGE_SECONDS", 7 * 24 * 3600)
JETSTREAM_DUPLICATE_WINDOW_SECONDS = env_int("JETSTREAM_DUPLICATE_WINDOW_SECONDS", 300)
CONSUMER_MAX_DELIVER = env_int("CONSUMER_MAX_DELIVER", 3)
CONSUMER_ACK_WAIT_SECONDS = env_int("CONSUMER_ACK_WAIT_SECONDS", 30)
CONSUMER_BACKOFF_BASE_SECONDS = float(env_str("CONSUMER_BACKOFF_BASE_SECONDS", "1"))
CONSUMER_FETCH_BATCH = env_int("CONSUMER_FETCH_BATCH", 32)
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 500)
RELAY_PUBLISH_TIMEOUT_SECONDS = env_int("RELAY_PUBLISH_TIMEOUT_SECONDS", 5)
# The public message contracts (each app's messages.py), registered by subject.
MESSAGE_MODULES = ["orders.messages", "inventory.messages", "payments.messages"]
# The outboxes the relay drains, one per service database (see infra/models.py).
OUTBOX_MODELS = ["orders.OutboxMessage", "inventory.OutboxMessage", "payments.OutboxMessage"]

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:16379/0")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
RELAY_BEAT_SECONDS = float(env_str("RELAY_BEAT_SECONDS", "1"))
SWEEP_BEAT_SECONDS = float(env_str("SWEEP_BEAT_SECONDS", "5"))
CELERY_BEAT_SCHEDULE = {
    # Safety net: a lost on-commit kick delays a message by at most this much.
    "outbox-relay": {"task": "infra.tasks.outbox_relay", "schedule": RELAY_BEAT_SECONDS,
                     "options": {"expires": RELAY_BEAT_SECONDS * 5}},
    "reservations-expire": {"task": "inventory.tasks.reservations_expire_sweep_task",
                            "schedule": SWEEP_BEAT_SECONDS, "options": {"expires": SWEEP_BEAT_SECONDS * 5}},
    "saga-timeouts": {"task": "saga.tasks.saga_timeouts_sweep_task",
                      "schedule": SWEEP_BEAT_SECONDS, "options": {"expires": SWEEP_BEAT_SECONDS * 5}},
}

# --- Stripe -----------------------------------------------------------------------------
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "http://127.0.0.1:18420")
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "sk_test_localstripe")
STRIPE_TIMEOUT_SECONDS = env_int("STRIPE_TIMEOUT_SECONDS", 10)
# Signing secret of the webhook endpoint (whsec_...); the endpoint answers 503 while it is unset.
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)

# --- Saga timeouts ----------------------------------------------------------------------
SAGA_TIMEOUT_SECONDS = env_int("SAGA_TIMEOUT_SECONDS", 300)
PAYMENT_TIMEOUT_SECONDS = env_int("PAYMENT_TIMEOUT_SECONDS", 120)
RESERVATION_TTL_SECONDS = env_int("RESERVATION_TTL_SECONDS", 900)
RESERVATION_TTL_MAX_SECONDS = env_int("RESERVATION_TTL_MAX_SECONDS", 24 * 3600)
SAGA_COMPENSATION_RETRY_SECONDS = env_int("SAGA_COMPENSATION_RETRY_SECONDS", 30)
SAGA_COMPENSATION_MAX_ATTEMPTS = env_int("SAGA_COMPENSATION_MAX_ATTEMPTS", 5)

# --- API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "a4co.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "NON_FIELD_ERRORS_KEY": "nonFieldErrors",
}
API_PAGE_SIZE_DEFAULT = 50
API_PAGE_SIZE_MAX = 200
ORDER_MAX_ITEMS = 100
ORDER_MAX_QUANTITY = 10_000
ORDER_MAX_UNIT_PRICE = "1000000.00"
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
