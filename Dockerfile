# syntax=docker/dockerfile:1
#
# One image for every a4co-saga process: the web API (gunicorn, the default command), the
# Celery worker and beat, the JetStream consumers and the one-shot migrate/setup steps;
# docker-compose.yml runs each with its own command. Build it with
#
#     docker build -t a4co-saga .                            # the app (the last stage)
#     docker build --target localstripe -t a4co-localstripe .   # the local Stripe stand-in
#
# Only requirements.txt goes in: the dev/test tools of requirements-dev.txt (embedded
# servers, pytest, localstripe, ...) never enter the app image.

ARG PYTHON_IMAGE=python:3.11-slim

# --- shared base ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# --- build stages: compilers live here only --------------------------------------------------
FROM python-base AS build-tools
# Every pinned requirement ships a wheel for CPython 3.11 on x86_64/arm64 today; the
# compiler is the fallback for a pin (or a platform) that has to build from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

FROM build-tools AS builder
WORKDIR /build
COPY requirements.txt .
# Build (or fetch) a wheel for every runtime requirement, then install exactly those into a
# virtualenv that the final stage copies whole.
RUN pip wheel --wheel-dir /wheels -r requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheels -r requirements.txt

FROM build-tools AS localstripe-builder
# Pinned as in requirements-dev.txt: devstack/localstripe_fast.py patches 1.15.x internals.
RUN python -m venv /opt/localstripe \
    && /opt/localstripe/bin/pip install localstripe==1.15.10

# --- localstripe: the Stripe API stand-in for local use (docker compose --profile local) ------
FROM python-base AS localstripe
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=localstripe-builder /opt/localstripe /opt/localstripe
ENV PATH=/opt/localstripe/bin:$PATH
WORKDIR /app
# The launcher imports nothing else from the repository.
COPY devstack/localstripe_fast.py devstack/localstripe_fast.py
USER app
EXPOSE 8420
# In memory only: every start is an empty Stripe account.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8420/v1/customers?limit=1', headers={'Authorization': 'Bearer sk_test_healthcheck'}), timeout=4)"]
CMD ["python", "devstack/localstripe_fast.py", "--port", "8420", "--host", "0.0.0.0"]

# --- app: the default target -------------------------------------------------------------------
FROM python-base AS app
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
# The production settings: DEBUG off, HTTPS only, and every secret and address from the
# environment (a missing one stops the process at start, naming it; see .env.example).
# WEB_CONCURRENCY is gunicorn's worker count (gunicorn.conf.py).
ENV PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=a4co.settings.production \
    WEB_CONCURRENCY=2
WORKDIR /app
# The code stays owned by root, read-only for the app user; .dockerignore keeps out the
# virtualenv, the devstack data, the tests and any .env file.
COPY . .
# The admin's and Swagger UI's static files, served by WhiteNoise from STATIC_ROOT (gunicorn
# serves no files). Collected with the dev settings: the build has none of the production secrets.
RUN DJANGO_SETTINGS_MODULE=a4co.settings.dev python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q /app
USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py", "http", "/healthz"]
# gunicorn.conf.py: 0.0.0.0:8000, WEB_CONCURRENCY workers x GUNICORN_THREADS threads, timeouts,
# worker recycling, an access log without credentials, no control socket ($HOME is read-only).
CMD ["python", "-m", "gunicorn", "-c", "/app/gunicorn.conf.py", "a4co.wsgi:application"]
