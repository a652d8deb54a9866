#!/usr/bin/env bash
# The test command of the README: runs every test on embedded storage (SQLite, in-process cache), then
# again on PostgreSQL and Redis, which it starts (or installs) when they are not answering.
set -euo pipefail
cd "$(dirname "$0")/.."

services_env=$(bash scripts/services.sh)

echo "== tests on SQLite and the in-process cache"
env -u RAPPORT_TEST_DATABASE_URL -u RAPPORT_TEST_REDIS_URL cargo test --workspace --all-targets --locked

echo "== tests on PostgreSQL and Redis"
eval "$services_env"
cargo test --workspace --all-targets --locked
