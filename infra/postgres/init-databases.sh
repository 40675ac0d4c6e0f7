#!/bin/sh
# Creates one database per service in the postgres container, the first time it starts
# (the official image runs /docker-entrypoint-initdb.d/* only on an empty data directory;
# docker-compose.yml mounts this file there). POSTGRES_DB (a4co_default) is created by the
# image itself; the others are listed in A4CO_DATABASES. Safe to run again: existing
# databases are left alone, e.g. by hand on an old volume:
#   docker compose exec -e A4CO_DATABASES="a4co_orders a4co_inventory a4co_payments" \
#       postgres sh /docker-entrypoint-initdb.d/10-init-databases.sh
set -eu

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

for db in ${A4CO_DATABASES:-a4co_orders a4co_inventory a4co_payments}; do
    echo "init-databases: ensuring database $db (owner $POSTGRES_USER)"
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        --set db="$db" --set owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
done
