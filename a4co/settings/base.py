"""Settings shared by every environment; everything environment-specific comes from variables.

The defaults point at the embedded servers that `make run` starts (see devstack/), so
`.venv/bin/python manage.py ...` in another terminal reaches the same services.
"""
from __future__ import annotations

import os
import re
import ssl
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
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served by us: /api/docs/ needs no CDN
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
    # 413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE before anything reads it (DRF does not check).
    "a4co.middleware.RequestBodyLimitMiddleware",
    # gunicorn serves no files: WhiteNoise serves STATIC_ROOT (collectstatic) for the admin and /api/docs/.
    "whitenoise.middleware.WhiteNoiseMiddleware",
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
# Server-side parameter binding: psycopg then prepares a statement on a connection once it has
# run it DB_PREPARE_THRESHOLD times, so PostgreSQL stops parsing and planning the hot path's
# statements for every message. Turn off behind a transaction-pooling proxy that cannot keep
# prepared statements (PgBouncer before 1.21).
DB_SERVER_SIDE_BINDING = env_bool("DB_SERVER_SIDE_BINDING", True)
DB_PREPARE_THRESHOLD = env_int("DB_PREPARE_THRESHOLD", 5)


def database_options() -> dict:
    """The psycopg OPTIONS every alias shares."""
    if not DB_SERVER_SIDE_BINDING:
        return {}
    return {"server_side_binding": True, "prepare_threshold": DB_PREPARE_THRESHOLD}


def _database(url: str) -> dict:
    config = dj_database_url.parse(url, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
    config.setdefault("OPTIONS", {}).update(database_options())
    config["ENGINE"] = "a4co.postgres"  # Django's, with a health check without a round trip
    return config


def service_databases(default_url: str, config) -> dict:
    """The four aliases: `default` at `default_url`, each service at its own URL variable or there too."""
    return {
        "default": config(default_url),
        "orders": config(env_str("ORDERS_DATABASE_URL", default_url)),
        "inventory": config(env_str("INVENTORY_DATABASE_URL", default_url)),
        "payments": config(env_str("PAYMENTS_DATABASE_URL", default_url)),
    }


def database_identities(databases: dict) -> dict:
    # Which aliases share a physical database, fixed at settings time because the test runner
    # renames databases one alias at a time (see a4co/routers.py).
    return {alias: (c["HOST"], str(c["PORT"]), c["NAME"]) for alias, c in databases.items()}


DATABASES = service_databases(DATABASE_URL, _database)
DATABASE_IDENTITIES = database_identities(DATABASES)
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
NATS_URL = env_str("NATS_URL", "nats://127.0.0.1:14222")  # comma-separated for a cluster's seed servers
NATS_CONNECT_TIMEOUT_SECONDS = env_int("NATS_CONNECT_TIMEOUT_SECONDS", 5)
# Authentication, one way at most: user + password, a token, or an nkey/JWT credentials file
# (infra/nats.py passes them to nats-py; they never appear in a log line or an error message).
NATS_USER = env_str("NATS_USER", "")
NATS_PASSWORD = env_str("NATS_PASSWORD", "")
NATS_TOKEN = env_str("NATS_TOKEN", "")
NATS_CREDS_FILE = env_str("NATS_CREDS_FILE", "")
# TLS: a CA bundle to verify the server (implies TLS, as does a tls:// URL); cert + key for mutual TLS.
NATS_TLS_CA_FILE = env_str("NATS_TLS_CA_FILE", "")
NATS_TLS_CERT_FILE = env_str("NATS_TLS_CERT_FILE", "")
NATS_TLS_KEY_FILE = env_str("NATS_TLS_KEY_FILE", "")
if sum(map(bool, (NATS_USER or NATS_PASSWORD, NATS_TOKEN, NATS_CREDS_FILE))) > 1:
    raise ImproperlyConfigured("set one NATS authentication: NATS_USER + NATS_PASSWORD, NATS_TOKEN or NATS_CREDS_FILE")
if bool(NATS_USER) != bool(NATS_PASSWORD):
    raise ImproperlyConfigured("NATS_USER and NATS_PASSWORD go together: set both or neither")
if NATS_TLS_KEY_FILE and not NATS_TLS_CERT_FILE:
    raise ImproperlyConfigured("NATS_TLS_KEY_FILE needs NATS_TLS_CERT_FILE (the client certificate)")
JETSTREAM_REPLICAS = env_int("JETSTREAM_REPLICAS", 1)
JETSTREAM_MAX_AGE_SECONDS = env_int("JETSTREAM_MAX_AGE_SECONDS", 7 * 24 * 3600)
JETSTREAM_DUPLICATE_WINDOW_SECONDS = env_int("JETSTREAM_DUPLICATE_WINDOW_SECONDS", 300)
CONSUMER_MAX_DELIVER = env_int("CONSUMER_MAX_DELIVER", 3)
CONSUMER_ACK_WAIT_SECONDS = env_int("CONSUMER_ACK_WAIT_SECONDS", 30)
CONSUMER_BACKOFF_BASE_SECONDS = float(env_str("CONSUMER_BACKOFF_BASE_SECONDS", "1"))
CONSUMER_FETCH_BATCH = env_int("CONSUMER_FETCH_BATCH", 32)
# Messages fetched per pull by a route that handles a fetched batch in one transaction
# (CONSUMER_BATCH_TRANSACTIONS): the more a transaction carries under load, the less each
# message costs (32 -> 128: the consumers' CPU per saga -10 % at saturation, docs/benchmarks.md).
# Routes handled one by one keep CONSUMER_FETCH_BATCH: what they fetch waits for a thread, its
# ack deadline running (a batch's deadlines are pushed back while it is handled).
CONSUMER_BATCH_FETCH = env_int("CONSUMER_BATCH_FETCH", 128)
# Threads per consumer route: messages of different orders are handled in parallel. More threads
# than the cores can keep busy cost CPU in GIL hand-offs: on 2 cores 4 carried the most sagas
# per CPU-second (8 cost 10 % more CPU per saga, 2 left CPU idle; docs/benchmarks.md).
CONSUMER_THREADS = env_int("CONSUMER_THREADS", 4)
# A fetched batch of a route that allows it (ConsumerRoute.batch) is handled in one transaction
# (one commit per batch; one by one if anything in it fails). Off: one each.
CONSUMER_BATCH_TRANSACTIONS = env_bool("CONSUMER_BATCH_TRANSACTIONS", True)
# How long a message waits in place for a dependency that is down (database, Stripe) before the
# failure counts as one of its max_deliver deliveries.
CONSUMER_UNAVAILABLE_WAIT_SECONDS = env_int("CONSUMER_UNAVAILABLE_WAIT_SECONDS", 30)
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 500)
RELAY_PUBLISH_TIMEOUT_SECONDS = env_int("RELAY_PUBLISH_TIMEOUT_SECONDS", 5)
# Messages per JetStream atomic batch (nats-server 2.12+; its own limit is 1000 by default):
# one fsync and one PubAck per batch. 0 publishes message by message.
RELAY_ATOMIC_BATCH_MAX = env_int("RELAY_ATOMIC_BATCH_MAX", 1000)
# A stream's rows go out as an atomic batch only from this many on; fewer are published one by
# one (pipelined): the server stages every atomic batch on disk, which only pays off for a backlog.
RELAY_ATOMIC_BATCH_MIN = env_int("RELAY_ATOMIC_BATCH_MIN", 16)
# The public message contracts (each app's messages.py), registered by subject.
MESSAGE_MODULES = ["orders.messages", "inventory.messages", "payments.messages"]
# The outboxes the relay drains, one per service database (see infra/models.py).
OUTBOX_MODELS = ["orders.OutboxMessage", "inventory.OutboxMessage", "payments.OutboxMessage"]

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:16379/0")
# A rediss:// broker (Redis over TLS) verifies the server's certificate, against REDIS_TLS_CA_FILE
# when set (else the system's CAs); REDIS_TLS_CERT_FILE + REDIS_TLS_KEY_FILE for mutual TLS.
REDIS_TLS_CA_FILE = env_str("REDIS_TLS_CA_FILE", "")
REDIS_TLS_CERT_FILE = env_str("REDIS_TLS_CERT_FILE", "")
REDIS_TLS_KEY_FILE = env_str("REDIS_TLS_KEY_FILE", "")


def redis_tls_options() -> dict:
    """redis-py's TLS keyword arguments for rediss:// URLs (kombu and Django's RedisCache take them)."""
    options = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if REDIS_TLS_CA_FILE:
        options["ssl_ca_certs"] = REDIS_TLS_CA_FILE
    if REDIS_TLS_CERT_FILE:
        options.update(ssl_certfile=REDIS_TLS_CERT_FILE, ssl_keyfile=REDIS_TLS_KEY_FILE or None)
    return options


if CELERY_BROKER_URL.startswith("rediss://"):
    CELERY_BROKER_USE_SSL = redis_tls_options()
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every DB connection before and after each task unless this is set;
# it then closes them only every 2 x N tasks. a4co/celery.py closes stale ones (CONN_MAX_AGE,
# errors) before each task instead, as the web and consumer processes do.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 100_000)
RELAY_BEAT_SECONDS = float(env_str("RELAY_BEAT_SECONDS", "1"))
# A pending kick older than this is assumed lost (its task died) and the next commit kicks again.
RELAY_KICK_FLAG_TTL_MS = env_int("RELAY_KICK_FLAG_TTL_MS", 2000)
# 0 (the default): each commit kicks the relay from the committing thread at once. Above 0, a
# process's commits of the same moment share one relay kick (one Redis call per outbox): its
# kicker thread rests this long after each round (a commit after a quiet spell is kicked at once).
# Measured on 2 cores at 75 sagas/s (docs/benchmarks.md, eighth round): at once is 5-10 ms faster
# at p50 for the same CPU; the Redis calls it saves are cheaper than the waits it adds.
RELAY_KICK_COALESCE_SECONDS = float(env_str("RELAY_KICK_COALESCE_SECONDS", "0"))
# A relay task keeps relaying what commits wake it for during this long before it ends (0: it
# drains once). Under load that is one Celery task per this many seconds instead of one per commit.
RELAY_LINGER_SECONDS = float(env_str("RELAY_LINGER_SECONDS", "2"))
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
# Stripe calls a consumer process makes at once for a batch of charge requests (their intents
# created, then confirmed, side by side; payments.services.payments_charge_outcomes).
STRIPE_CONCURRENCY = env_int("STRIPE_CONCURRENCY", 8)
if STRIPE_CONCURRENCY < 1:
    raise ImproperlyConfigured(f"STRIPE_CONCURRENCY must be 1 or more, got {STRIPE_CONCURRENCY}")
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
        "a4co.api.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "a4co.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "NON_FIELD_ERRORS_KEY": "nonFieldErrors",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "A4CO order saga API",
    "DESCRIPTION": (
        "Orders (placing one starts its saga), product stock, reservations, payments and the saga "
        "history. Authenticate with `Authorization: Token <key>` (`manage.py api_token USERNAME`). "
        "Errors are `{\"detail\": \"...\", \"code\": \"...\"}`, plus one key per invalid field "
        "(its messages) on 400."),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
API_PAGE_SIZE_DEFAULT = 50
API_PAGE_SIZE_MAX = 200
ORDER_MAX_ITEMS = 100
ORDER_MAX_QUANTITY = 10_000
ORDER_MAX_UNIT_PRICE = "1000000.00"
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024  # request bodies: larger ones get a 413 (a4co/middleware.py)
# Placing orders, per API user, in DRF's syntax ("600/minute"; second, minute, hour or day); a
# client past it gets 429 with Retry-After. Empty (the default here): no limit.
ORDER_CREATE_THROTTLE_RATE = env_str("ORDER_CREATE_THROTTLE_RATE", "")
if ORDER_CREATE_THROTTLE_RATE and not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)",
                                                   ORDER_CREATE_THROTTLE_RATE):
    raise ImproperlyConfigured(
        f"ORDER_CREATE_THROTTLE_RATE must look like 600/minute, got {ORDER_CREATE_THROTTLE_RATE!r}")

# Each web process keeps an API token's lookup (token + user) this long: a deleted token or a
# deactivated user still gets through for up to this many seconds. 0: every request looks up
# (the lookup was a tenth of the CPU of an order POST; docs/benchmarks.md).
API_TOKEN_CACHE_SECONDS = float(env_str("API_TOKEN_CACHE_SECONDS", "5"))
if API_TOKEN_CACHE_SECONDS < 0:
    raise ImproperlyConfigured(f"API_TOKEN_CACHE_SECONDS must be 0 or more, got {API_TOKEN_CACHE_SECONDS}")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# WhiteNoise indexes STATIC_ROOT (filled by collectstatic) once at start-up. Where collectstatic
# has not run (the in-process test client, a fresh checkout) it looks files up per request
# instead, which also spares a "No directory at" warning per request handler.
WHITENOISE_AUTOREFRESH = not STATIC_ROOT.is_dir()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Plain storage, not the manifest one: a missing collectstatic must not break every page.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Admin console (saga ops) -----------------------------------------------------------
# At most this many sagas per bulk action (retry, force compensation, mark resolved); more is refused.
ADMIN_BULK_ACTION_LIMIT = env_int("ADMIN_BULK_ACTION_LIMIT", 20)
# "Stuck" in the saga list: not ended and past its deadline, or no change for this long.
ADMIN_SAGA_STUCK_IDLE_SECONDS = env_int("ADMIN_SAGA_STUCK_IDLE_SECONDS", 600)
# "Expiring soon" in the reservation list: ACTIVE and expiring within this many seconds.
ADMIN_RESERVATION_EXPIRING_SECONDS = env_int("ADMIN_RESERVATION_EXPIRING_SECONDS", 120)

# --- Logging ----------------------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line with orderId/sagaId/eventId/consumer when known
# (see a4co/logging.py); plain (the default) is for people reading a terminal.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "a4co.logging.ContextFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "a4co.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # stripe-python logs every request at INFO: too much on the payment hot path.
    "loggers": {"django.db.backends": {"level": "INFO"}, "stripe": {"level": "WARNING"}},
}
# Celery workers and beat keep this configuration instead of installing their own handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Metrics ----------------------------------------------------------------------------
# GET /metrics (infra/metrics.py). Counters of the relay and the consumers live in their
# processes; with PROMETHEUS_MULTIPROC_DIR set (make run sets it) every process writes them to
# that directory and /metrics adds them up. Unset, each process exports only its own.
# Business and backlog gauges are computed from the databases and NATS at scrape time.
METRICS_NATS_TIMEOUT_SECONDS = float(env_str("METRICS_NATS_TIMEOUT_SECONDS", "1"))
# A scrape reuses the JetStream consumer states (or NATS being down) for this long.
METRICS_NATS_CACHE_SECONDS = float(env_str("METRICS_NATS_CACHE_SECONDS", "5"))
# The saga duration histogram keeps the sagas finished more than SETTLE seconds ago counted in
# memory (they never change) and queries only the newer ones; it recounts all every RECOUNT s.
METRICS_SAGA_SETTLE_SECONDS = env_int("METRICS_SAGA_SETTLE_SECONDS", 300)
METRICS_SAGA_RECOUNT_SECONDS = env_int("METRICS_SAGA_RECOUNT_SECONDS", 3600)
