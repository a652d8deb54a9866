#!/usr/bin/env bash
# The test command of the README: runs every test on embedded storage (SQLite, in-process cache), then
# again on PostgreSQL and Redis, which it starts (or installs) when they are not answering. Each pass
# ends with the Python client suite (tests/python: grpcio against a real `rapport serve`).
set -euo pipefail
cd "$(dirname "$0")/.."

services_env=$(bash scripts/services.sh)

echo "== tests on SQLite and the in-process cache"
env -u RAPPORT_TEST_DATABASE_URL -u RAPPORT_TEST_REDIS_URL cargo test --workspace --all-targets --locked
echo "== the Python client suite (grpcio, stubs generated from proto/) on SQLite"
env -u RAPPORT_TEST_DATABASE_URL -u RAPPORT_TEST_REDIS_URL bash tests/python/run.sh

echo "== tests on PostgreSQL and Redis"
eval "$services_env"
cargo test --workspace --all-targets --locked
echo "== the Python client suite on PostgreSQL and Redis"
bash tests/python/run.sh
