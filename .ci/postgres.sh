#!/usr/bin/env bash
# Start Debian's PostgreSQL on 127.0.0.1:5432 (installing it if needed) with a `dualtrack` role that may
# create databases; print the URL. Idempotent. Logs go to stderr so that stdout is only the URL.
set -euo pipefail
{
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
  if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
    pg_createcluster "$ver" main
  fi
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  for _ in $(seq 1 50); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 0.2
  done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='dualtrack'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE dualtrack LOGIN PASSWORD 'dualtrack' CREATEDB\""
} >&2
echo "postgresql://dualtrack:dualtrack@127.0.0.1:5432/postgres"
