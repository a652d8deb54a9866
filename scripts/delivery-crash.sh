#!/usr/bin/env bash
# The delivery crash test of docs/BENCHMARKS.md: a real SMTP server (bench/smtp_sink.py, aiosmtpd) counts
# every message per Message-ID without deduplicating; rapport sends N personalised marketing emails to it,
# is killed with SIGKILL once KILL_AT of them have arrived, and is started again; the client then submits
# the whole batch again with the same idempotency keys (a client retrying after the crash). Passes when
# the server received every message exactly once.
#
#   bash scripts/delivery-crash.sh [N=100000] [KILL_AT=N*4/10]
#
# RAPPORT_BIN (default target/release/rapport, built when missing) and SMTP_PORT/HTTP_PORT/GRPC_PORT/
# WEB_PORT may be set; RAPPORT__STORAGE__URL and RAPPORT__CACHE__URL select PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
KILL_AT=${2:-$((N * 4 / 10))}
SMTP_PORT=${SMTP_PORT:-2525}
HTTP_PORT=${HTTP_PORT:-2580}
GRPC_PORT=${GRPC_PORT:-50071}
WEB_PORT=${WEB_PORT:-8095}
target="${CARGO_TARGET_DIR:-target}"
BIN=${RAPPORT_BIN:-$target/release/rapport}
[ -x "$BIN" ] || cargo build --release -p rapport --locked
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q aiosmtpd

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

stats() { curl -sf "http://127.0.0.1:$HTTP_PORT/stats"; }
count() { stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])'; }

python3 bench/smtp_sink.py --smtp-port "$SMTP_PORT" --http-port "$HTTP_PORT" >"$work/sink.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do stats >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$work/rapport.toml" <<TOML
[telemetry]
log_filter = "warn"
[delivery]
quiet_hours_start = "00:00"
quiet_hours_end = "00:00"
lease_seconds = 15
[[delivery.providers]]
name = "relay"
kind = "smtp"
channels = ["email"]
primary = true
url = "smtp://127.0.0.1:$SMTP_PORT?tls=none"
connections = 16
timeout_ms = 5000
reconcile_url = "http://127.0.0.1:$HTTP_PORT/messages"
TOML

serve() {
  "$BIN" serve --config "$work/rapport.toml" --data-dir "$work/data" \
    --grpc-listen "127.0.0.1:$GRPC_PORT" --http-listen "127.0.0.1:$WEB_PORT" >>"$work/rapport.log" 2>&1 &
  rapport_pid=$!
  pids+=($rapport_pid)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$WEB_PORT/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "rapport did not start:"; tail -20 "$work/rapport.log"; exit 1
}

B=("$BIN" bench send --data-dir "$work/data" --endpoint "http://127.0.0.1:$GRPC_PORT" --config "$work/rapport.toml")
serve
echo "== submitting $N messages; SIGKILL once $KILL_AT have arrived"
"${B[@]}" --messages "$N" --batch 1000 --rate 5000 --customers 1000 --run-id crash >"$work/submit.log" 2>&1 &
submit=$!
while [ "$(count)" -lt "$KILL_AT" ]; do sleep 0.05; done
kill -9 "$rapport_pid"
at_kill=$(count)
echo "killed rapport (SIGKILL) with $at_kill received"
wait "$submit" || echo "(the submission was cut by the kill: the retry below covers it)"
cat "$work/submit.log"
sleep 1
serve
echo "== restarted; the client submits the same $N messages again (same idempotency keys)"
"${B[@]}" --messages "$N" --batch 1000 --rate 20000 --customers 1000 --run-id crash --skip-setup
# Until every message arrived and nothing more comes, or nothing moves for 30 s.
last=-1
still=0
while [ "$still" -lt 15 ]; do
  c=$(count)
  if [ "$c" = "$last" ]; then
    [ "$c" -ge "$N" ] && [ "$still" -ge 2 ] && break
    still=$((still + 1))
  else
    still=0
  fi
  last=$c
  sleep 2
done
final=$(stats)
echo "sink after restart: $final"
curl -sf "http://127.0.0.1:$WEB_PORT/metrics" | grep -E "^rapport_delivery_handoffs_recovered_total|^rapport_messages_sent_total" || true
python3 - "$final" "$N" <<'PY'
import json, sys
s, n = json.loads(sys.argv[1]), int(sys.argv[2])
ok = s["distinct"] == n and s["duplicates"] == 0 and s["messages"] == n
print(("PASS" if ok else "FAIL") + f": {s['messages']} received, {s['distinct']} distinct Message-IDs of {n}, {s['duplicates']} duplicates")
sys.exit(0 if ok else 1)
PY
