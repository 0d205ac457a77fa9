#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the service tests.
#
#   eval "$(.ci/postgres.sh)"      # installs Debian's postgresql if missing, starts a
#                                  # server, creates the test database and exports
#                                  # ALTO_TEST_POSTGRES_URL (the only line on stdout)
#   .ci/postgres.sh stop           # stops that server
#
# Settings: ALTO_PG_DIR (data directory, default /tmp/alto-pg), ALTO_PG_PORT (55432),
# ALTO_PG_DB (alto_test). Works as root on a fresh Debian machine (the server then
# runs as the `postgres` user the package creates) and as an ordinary user who has
# PostgreSQL installed. Progress goes to stderr.
set -euo pipefail

PGDIR="${ALTO_PG_DIR:-/tmp/alto-pg}"
PORT="${ALTO_PG_PORT:-55432}"
DB="${ALTO_PG_DB:-alto_test}"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; fi
  done | sort -V | tail -n 1
}

BINDIR="$(find_bindir || true)"
if [ -z "$BINDIR" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not installed and this is not root; install Debian's postgresql package"
    exit 1
  fi
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  BINDIR="$(find_bindir)"
fi

# the server refuses to run as root: use the package's postgres user then
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

PGCTL=("$BINDIR/pg_ctl" -D "$PGDIR")

if [ "${1:-start}" = "stop" ]; then
  if [ -f "$PGDIR/postmaster.pid" ]; then
    as_pg "${PGCTL[@]}" stop -m fast -w >&2
  fi
  exit 0
fi

if [ ! -f "$PGDIR/PG_VERSION" ]; then
  log "initialising $PGDIR"
  mkdir -p "$PGDIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PGDIR"
  chmod 700 "$PGDIR"
  as_pg "$BINDIR/initdb" -D "$PGDIR" -A trust -U postgres -E UTF8 --no-locale >&2
fi

if ! as_pg "${PGCTL[@]}" status >/dev/null 2>&1; then
  log "starting the server on 127.0.0.1:$PORT"
  as_pg "${PGCTL[@]}" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start >&2
fi

PSQL=("$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAq)
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  log "creating database $DB"
  "${PSQL[@]}" -c "CREATE DATABASE $DB" >&2
fi

URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
log "ready: $URL"
echo "export ALTO_TEST_POSTGRES_URL=$URL"
