#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, trust auth, database `test`) and Redis (127.0.0.1:6379) answer:
# starts them when they are installed but stopped, installs them from Debian's packages when missing.
# Prints the URLs to use as `export` lines.
set -euo pipefail

log() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq >&2; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  log "installing postgresql"
  apt_install postgresql postgresql-client
fi
if ! pg_up; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect over TCP without a password, as on the development machines.
  if [ -f "$hba" ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting postgresql $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { log "postgresql did not start"; exit 1; }
fi

pg_user=""
for u in postgres root; do
  if psql -h 127.0.0.1 -U "$u" -d postgres -Atc 'select 1' >/dev/null 2>&1; then pg_user=$u; break; fi
done
if [ -z "$pg_user" ]; then log "no postgres role accepts trust connections on 127.0.0.1"; exit 1; fi
if [ "$(psql -h 127.0.0.1 -U "$pg_user" -d postgres -Atc "select 1 from pg_database where datname = 'test'")" != 1 ]; then
  psql -h 127.0.0.1 -U "$pg_user" -d postgres -qc 'create database test' >&2
fi

if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis"
  apt_install redis-server
fi
if ! redis_up; then
  log "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  redis_up || { log "redis did not start"; exit 1; }
fi

echo "export RAPPORT_TEST_DATABASE_URL=postgres://$pg_user@127.0.0.1:5432/test"
echo "export RAPPORT_TEST_REDIS_URL=redis://127.0.0.1:6379"
