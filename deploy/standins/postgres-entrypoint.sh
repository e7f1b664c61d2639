#!/bin/bash
# The official postgres image's entrypoint, cut to what fedmq's compose file uses (see postgres.Dockerfile).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
    # Read the password as root (a compose secret may be readable by root alone), then drop to postgres.
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then export POSTGRES_PASSWORD="$(< "$POSTGRES_PASSWORD_FILE")"; unset POSTGRES_PASSWORD_FILE; fi
    mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    exec runuser -u postgres -- "$0" "$@"
fi
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then echo "error: set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)" >&2; exit 1; fi
    pwfile="$(mktemp)"; printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    # UTF8 like the official image (LANG en_US.utf8): with no locale initdb picks SQL_ASCII, where psycopg
    # hands back bytes and SQLAlchemy fails at its first query.
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Sockets only while the database is made, so a TCP health check says ready only once it is.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then createdb --username="$POSTGRES_USER" "$POSTGRES_DB"; fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres stand-in: made database $POSTGRES_DB for $POSTGRES_USER"
fi
unset POSTGRES_PASSWORD
if [ "$1" = postgres ]; then shift; exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"; fi
exec "$@"
