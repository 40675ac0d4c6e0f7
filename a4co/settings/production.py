"""Production settings: DEBUG off, HTTPS only, everything secret or site-specific from the environment.

Every variable read here (and in base.py) is listed in `.env.example`. The required ones have no
default on purpose: a missing or empty one stops the process at start with an ImproperlyConfigured
that names all of them, rather than a deployment quietly talking to a developer's localhost or
signing sessions with a published key. `manage.py check --deploy` is clean with these settings
(tests/test_production.py runs it with `.env.example`).

Assumes a TLS-terminating proxy (or load balancer) in front of gunicorn that sets
X-Forwarded-Proto and strips any such header a client sent.
"""
from __future__ import annotations

import os

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from a4co.settings.base import *  # noqa: F403
from a4co.settings.base import (
    LOGGING,
    database_identities,
    database_options,
    env_bool,
    env_int,
    env_str,
    redis_tls_options,
    service_databases,
)

REQUIRED = (
    "DJANGO_SECRET_KEY",
    "ALLOWED_HOSTS",
    "DATABASE_URL",
    "NATS_URL",
    "CELERY_BROKER_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
)
_missing = [name for name in REQUIRED if not os.environ.get(name, "").strip()]
if _missing:
    raise ImproperlyConfigured(
        f"a4co.settings.production needs these environment variables, which are not set: {', '.join(_missing)} "
        "(see .env.example for every variable and what it means)")


def env_required(name: str) -> str:
    return os.environ[name].strip()


DEBUG = False

SECRET_KEY = env_required("DJANGO_SECRET_KEY")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be a random string of at least 50 characters "
                               "(python -c 'import secrets; print(secrets.token_urlsafe(50))')")
ALLOWED_HOSTS = [host.strip() for host in env_required("ALLOWED_HOSTS").split(",") if host.strip()]
if "*" in ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name the site's hosts, not '*'")
# Origins (scheme://host[:port]) whose unsafe requests (the admin's forms) pass the CSRF check when
# they differ from the host served: by default https:// each allowed host (".example.com" ->
# https://*.example.com).
CSRF_TRUSTED_ORIGINS = [origin.strip() for origin in env_str(
    "CSRF_TRUSTED_ORIGINS",
    ",".join(f"https://*{host}" if host.startswith(".") else f"https://{host}" for host in ALLOWED_HOSTS),
).split(",") if origin.strip()]

# --- HTTPS and browser security ----------------------------------------------------------
# The proxy terminates TLS and says so in X-Forwarded-Proto (and must strip a client's own).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# Plain-HTTP callers inside the deployment: container healthchecks and the Prometheus scraper.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"

# --- Databases: a psycopg connection pool per alias ------------------------------------------
# Per-service URLs as in base.py; TLS and other libpq options go in the URL's query string
# (postgres://user:pass@host:5432/db?sslmode=verify-full&sslrootcert=/run/secrets/pg-ca.pem),
# passwords URL-encoded. With DB_POOL (the default) each process keeps up to DB_POOL_MAX_SIZE
# connections per alias (Django requires CONN_MAX_AGE = 0 with a pool; the pool checks a
# connection's health itself); DB_POOL=false falls back to persistent connections of
# DB_CONN_MAX_AGE seconds with health checks.
DATABASE_URL = env_required("DATABASE_URL")
DB_POOL = env_bool("DB_POOL", True)
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 1)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 8)
DB_POOL_TIMEOUT_SECONDS = env_int("DB_POOL_TIMEOUT_SECONDS", 10)
CONN_MAX_AGE = 0 if DB_POOL else env_int("DB_CONN_MAX_AGE", 60)


def _database(url: str) -> dict:
    config = dj_database_url.parse(url, conn_max_age=CONN_MAX_AGE, conn_health_checks=not DB_POOL)
    config.setdefault("OPTIONS", {}).update(database_options())
    config["ENGINE"] = "a4co.postgres"  # Django's, with a health check without a round trip
    if DB_POOL:
        config["OPTIONS"]["pool"] = {"min_size": DB_POOL_MIN_SIZE, "max_size": DB_POOL_MAX_SIZE,
                                     "timeout": DB_POOL_TIMEOUT_SECONDS}
    return config


DATABASES = service_databases(DATABASE_URL, _database)
DATABASE_IDENTITIES = database_identities(DATABASES)

# --- Messaging, broker, cache -----------------------------------------------------------------
NATS_URL = env_required("NATS_URL")  # NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS_FILE, NATS_TLS_*: base.py
CELERY_BROKER_URL = env_required("CELERY_BROKER_URL")
if CELERY_BROKER_URL.startswith("rediss://"):
    CELERY_BROKER_USE_SSL = redis_tls_options()
# The throttles' counters must be shared by every web worker and machine: Redis (the broker's by
# default, under its own key prefix).
CACHE_URL = env_str("CACHE_URL", CELERY_BROKER_URL)
if not CACHE_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured("CACHE_URL must be a redis:// or rediss:// URL (the throttles' shared counters); "
                               "set CACHE_URL when CELERY_BROKER_URL is not Redis")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "a4co-cache",
        "OPTIONS": redis_tls_options() if CACHE_URL.startswith("rediss://") else {},
    },
}

# --- Stripe: the keys come from the environment only -----------------------------------------
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "https://api.stripe.com")
STRIPE_SECRET_KEY = env_required("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_required("STRIPE_WEBHOOK_SECRET")

# --- API --------------------------------------------------------------------------------------
ORDER_CREATE_THROTTLE_RATE = env_str("ORDER_CREATE_THROTTLE_RATE", "600/minute")

# --- Logging: one JSON object per line unless LOG_FORMAT=plain --------------------------------
LOG_FORMAT = env_str("LOG_FORMAT", "json").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', got {LOG_FORMAT!r}")
LOGGING = {**LOGGING, "handlers": {**LOGGING["handlers"],
                                   "console": {**LOGGING["handlers"]["console"], "formatter": LOG_FORMAT}}}
