#!/bin/sh
# Create or update the JetStream streams and durable consumers (idempotent), from the
# repository root: the image's /app, or a checkout. docker-compose.yml's `migrate` service
# does this on every `up`; run it by hand after recreating the NATS volume, e.g.
#   docker compose run --rm migrate infra/nats/jetstream-setup.sh
# NATS_URL (and the rest of the settings) come from the environment; PYTHON picks the
# interpreter (default `python`; in a checkout: PYTHON=.venv/bin/python).
set -eu

cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" manage.py setup_streams "$@"
