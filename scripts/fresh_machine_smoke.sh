#!/usr/bin/env bash
# The fresh-machine path: no DATABASE_URL, no broker, a new virtualenv and a new data folder.
# `make run` must create everything, start the embedded Postgres, migrate and serve; the
# official client must then complete, crash and resume a run against it; and a slice of the
# test suite must pass on the embedded Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."

unset DATABASE_URL CELERY_BROKER_URL TIDEBASE_API_KEY || true
export TIDEBASE_DATA_DIR="${TIDEBASE_DATA_DIR:-$(mktemp -d /tmp/tidebase-fresh.XXXXXX)}"
export VENV="${FRESH_VENV:-$TIDEBASE_DATA_DIR/venv}"
export PORT="${FRESH_PORT:-7399}"
export TIDEBASE_LEASE_MS="${TIDEBASE_LEASE_MS:-3000}"  # so the crashed run lease lapses quickly
export TIDEBASE_WEBHOOK_ALLOW_HOSTS="127.0.0.1"  # the smoke's webhook receiver is local
log="$TIDEBASE_DATA_DIR/run.log"

cleanup() {
  if [ -n "${server_pid:-}" ]; then kill -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  make --no-print-directory stop VENV="$VENV" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "fresh machine: data in $TIDEBASE_DATA_DIR, venv in $VENV, port $PORT"
setsid make --no-print-directory run VENV="$VENV" PORT="$PORT" >"$log" 2>&1 &
server_pid=$!

for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$log"; echo "make run exited"; exit 1; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/health"; echo
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/admin/login/")" = 200
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/dashboard/")" = 302

# The official client from PyPI: a 10-step run, killed mid-way, resumed without re-executing.
bash scripts/interop_venv.sh
TIDEBASE_URL="http://127.0.0.1:$PORT" var/interop-venv/bin/python scripts/official_crash_resume.py

# The webhook worker and the embedded broker: a channel delivery reaches a local receiver.
python3 scripts/smoke_webhook.py "http://127.0.0.1:$PORT"

# A slice of the suite on the embedded Postgres.
make --no-print-directory test VENV="$VENV" \
  PYTEST_ARGS="tests/api/test_smoke.py tests/api/test_idempotency.py tests/queues tests/webhooks/test_delivery.py -p no:randomly"
echo "fresh-machine smoke: OK"
