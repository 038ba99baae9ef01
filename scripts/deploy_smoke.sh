#!/usr/bin/env bash
# Deployment smoke (docs/deploy.md, "What was exercised"): the scripts the container image runs,
# run on this machine outside the source tree, with the documented production settings.
#
#  1. deploy/build.sh (the image's build step) builds the wheel, installs it into a fresh
#     virtualenv under /tmp and collects the static files; the wheel must hold every template,
#     static file and migration of the source tree.
#  2. deploy/entrypoint.sh (the image's entry point), from a directory outside the checkout, with
#     only the settings of deploy/tidebase.env.example plus the database and broker URLs:
#     `check` (check --deploy) is clean; `web` refuses to start on an unmigrated database;
#     `migrate` migrates a fresh database on the machine's Postgres as its owner (no superuser,
#     as on managed Postgres); `web`, `worker` and `beat` start; /health and /ready answer 200;
#     the HTTPS-behind-a-proxy behaviour and static files are checked; a key made with the
#     `manage` role lets the SDK-only wheel (built by
#     deploy/build-sdk-wheel.sh, installed into its own fresh virtualenv) run a workflow whose
#     webhook the worker delivers through the broker; SIGTERM stops each role.
#  3. The broker is a private Redis with TLS (rediss:// with certificate verification) when this
#     machine's redis-server supports TLS, else the machine's Redis (db 10).
#  4. pg_dump / pg_restore of the live database into a scratch database, which then has every
#     migration applied and the same rows.
#  5. A private Postgres cluster with TLS only: DATABASE_URL with sslmode=verify-full connects over
#     TLS, and a wrong CA is refused (skipped unless run as root with runuser and initdb).
#
# Needs: python3 (3.11+), the machine's Postgres (DEPLOY_SMOKE_PG, default
# postgres://postgres@127.0.0.1:5432/postgres) with its client tools, redis-server, openssl, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)
work=$(mktemp -d /tmp/tidebase-deploy.XXXXXX)
prefix=$work/app
pg_admin=${DEPLOY_SMOKE_PG:-postgres://postgres@127.0.0.1:5432/postgres}
pg_base=${pg_admin%/*}
pg_hostport=${pg_base##*@}
db=tidebase_deploy_$$_$(date +%s)
restore_db=${db}_restore
pids=()
say() { printf '%s  [%3ss] %s\n' "deploy-smoke" "$(($(date +%s) - started))" "$*"; }
fail() {
  echo "deploy-smoke FAILED: $*" >&2
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
  exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  [ -n "${sdk_build:-}" ] && kill "$sdk_build" 2>/dev/null || true
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
  if [ -f "$work/tlspg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/tlspg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  for d in "$db" "$restore_db"; do psql -d "$pg_admin" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" 2>/dev/null || true; done
  psql -d "$pg_admin" -qc "DROP ROLE IF EXISTS $db" 2>/dev/null || true
  if [ "$status" -eq 0 ] || [ -z "${DEPLOY_SMOKE_KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work"; fi
  [ "$status" -eq 0 ] && say "cleaned up"
}
trap cleanup EXIT

# ---- 1. build: the image's build step -----------------------------------------------------------
say "build: deploy/build-sdk-wheel.sh (the SDK alone) into a fresh virtualenv, in the background"
(
  bash deploy/build-sdk-wheel.sh "$work/sdk-wheel" && python3 -m venv "$work/sdk" \
    && "$work/sdk/bin/pip" install -q -c requirements.lock "$work"/sdk-wheel/tidebase_django_sdk-*.whl
) > "$work/sdk-build.log" 2>&1 &
sdk_build=$!
say "build: deploy/build.sh $repo $prefix"
bash deploy/build.sh "$repo" "$prefix" > "$work/build.log" 2>&1 || fail "deploy/build.sh"
wheel=$(ls "$prefix"/wheel/tidebase_django-*.whl)

say "package data: every template, static file and migration of the source tree is in the wheel"
git ls-files --cached --others --exclude-standard > "$work/source-files"
python3 - "$wheel" "$work/source-files" <<'EOF' || fail "package data"
import os, re, sys, zipfile

wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
packages = wheel.read(top).decode().split()  # config, dashboard, tidebase, tidebase_core, webhooks, ...
expected = []
for path in open(sys.argv[2]).read().splitlines():
    if not os.path.isfile(path):
        continue
    if re.match(r"(templates|static)/", path):  # project level: shipped inside the config package
        expected.append("config/" + path)
    elif path.split("/")[0] in packages and (
        re.search(r"/(templates|static)/", path) or re.search(r"/migrations/[^/]+\.py$", path) or path.endswith("py.typed")
    ):
        expected.append(path)
missing = sorted(p for p in expected if p not in names)
if missing:
    sys.exit(f"missing from {os.path.basename(sys.argv[1])}: {missing}")
print(f"  {len(expected)} files checked, all in the wheel")
EOF

wait "$sdk_build" || fail "deploy/build-sdk-wheel.sh or installing the SDK wheel"

# Everything from here runs outside the checkout, from the installed packages.
cd "$work"
"$prefix/bin/python" - "$prefix" <<'EOF' || fail "the installed packages are not the wheel's"
import sys, config, dashboard, tidebase, tidebase_core, webhooks
for module in (config, dashboard, tidebase, tidebase_core, webhooks):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
EOF

# ---- 3. the broker: a private Redis with TLS when possible -----------------------------------
mkdir "$work/tls"
(
  cd "$work/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj "/CN=deploy-smoke CA"
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.cnf
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile san.cnf
  openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.crt -days 1 -subj "/CN=another CA"
) > "$work/openssl.log" 2>&1 || fail "openssl"
redis_port=$(free_port)
if redis-server --port 0 --tls-port "$redis_port" --tls-cert-file "$work/tls/server.crt" \
     --tls-key-file "$work/tls/server.key" --tls-ca-cert-file "$work/tls/ca.crt" --tls-auth-clients no \
     --save "" --appendonly no --dir "$work" --daemonize yes --pidfile "$work/redis.pid" \
     --logfile "$work/redis.log" >/dev/null 2>&1; then
  broker="rediss://127.0.0.1:$redis_port/0?ssl_cert_reqs=required&ssl_ca_certs=$work/tls/ca.crt"
  say "broker: private Redis with TLS on $redis_port (rediss://, certificate verified)"
else
  broker=${DEPLOY_SMOKE_BROKER:-redis://127.0.0.1:6379/10}
  say "broker: this redis-server has no TLS; rediss:// NOT exercised, using $broker"
fi

# ---- 2. the roles, with the documented settings ----------------------------------------------
# The application's database user is no superuser, as on managed Postgres: it owns its database.
db_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
psql -d "$pg_admin" -q -c "CREATE ROLE $db LOGIN PASSWORD '$db_password'" -c "CREATE DATABASE $db OWNER $db" \
  || fail "CREATE ROLE/DATABASE $db"
app_db_url="postgres://$db:$db_password@$pg_hostport/$db"
port=$(free_port)
app_env=(
  "PATH=$prefix/bin:/usr/local/bin:/usr/bin:/bin" "HOME=$work" "LANG=C.UTF-8"
  "DATABASE_URL=$app_db_url" "CELERY_BROKER_URL=$broker"
  "DJANGO_STATIC_ROOT=$prefix/staticfiles" "TIDEBASE_DATA_DIR=$work/data"
  # Small and quick: one web process, few threads and connections (this Postgres is shared),
  # heartbeats every second so /ready turns green fast; the webhook receiver is on loopback.
  "TIDEBASE_HOST=127.0.0.1" "PORT=$port" "WEB_WORKERS=1" "WEB_THREADS=4" "TIDEBASE_DB_POOL_SIZE=4"
  "TIDEBASE_WEBHOOK_CONCURRENCY=2" "TIDEBASE_HEARTBEAT_S=1" "TIDEBASE_WEBHOOK_ALLOW_HOSTS=127.0.0.1"
)
while IFS= read -r line; do
  case "$line" in '' | '#'*) continue ;; esac
  name=${line%%=*} value=${line#*=}
  case "$name" in POSTGRES_PASSWORD | TIDEBASE_DOMAIN) continue ;; esac  # compose only
  if [ "$value" = "..." ]; then value=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))'); fi
  app_env+=("$name=$value")
done < "$repo/deploy/tidebase.env.example"
host=$(printf '%s\n' "${app_env[@]}" | sed -n 's/^DJANGO_ALLOWED_HOSTS=//p' | cut -d, -f1)
role() { env -i "${app_env[@]}" "$prefix/bin/tidebase-entrypoint" "$@"; }
role_on() { local url=$1; shift; env -i "${app_env[@]}" "DATABASE_URL=$url" "$prefix/bin/tidebase-entrypoint" "$@"; }
start() {  # start ROLE in its own process group, logging to ROLE.log
  setsid env -i "${app_env[@]}" "$prefix/bin/tidebase-entrypoint" "$1" > "$work/$1.log" 2>&1 &
  pids+=("$!")
  eval "pid_$1=$!"
}

say "check: manage.py check --deploy --fail-level WARNING with deploy/tidebase.env.example"
role check > "$work/check.log" 2>&1 || fail "check --deploy is not clean with the documented settings"
grep -q "System check identified no issues" "$work/check.log" || fail "check --deploy said something"

say "web on an unmigrated database refuses to start (migrations are a separate step)"
if role web > "$work/web-unmigrated.log" 2>&1; then fail "web started with migrations pending"; fi
grep -q "migrations are pending and TIDEBASE_AUTO_MIGRATE=0" "$work/web-unmigrated.log" \
  || fail "web did not say why it refused"

say "migrate: a fresh database ($db), as its owner, no superuser"
role migrate > "$work/migrate.log" 2>&1 || fail "migrate"

say "start web, worker and beat through the entry point"
start web
start worker
start beat
base="http://127.0.0.1:$port"
for _ in $(seq 1 1200); do
  curl -fsS "$base/health" > /dev/null 2>&1 && break
  kill -0 "$pid_web" 2>/dev/null || fail "web exited"
  sleep 0.1
done
curl -fsS "$base/health" > /dev/null || fail "/health"
for _ in $(seq 1 1200); do
  code=$(curl -s -o "$work/ready.json" -w '%{http_code}' "$base/ready" || true)
  [ "$code" = 200 ] && break
  for r in web worker beat; do eval "kill -0 \$pid_$r" 2>/dev/null || fail "$r exited"; done
  sleep 0.1
done
[ "$code" = 200 ] || { cat "$work/ready.json"; fail "/ready stayed $code"; }
say "/health 200, /ready 200: $(cat "$work/ready.json")"

say "HTTPS behind the proxy: redirect, HSTS, secure cookies, static files"
check_http() {  # check_http EXPECTED_STATUS PATH [curl args...]: prints the response headers
  local want=$1 path=$2; shift 2
  local got
  got=$(curl -s -o /dev/null -D "$work/headers" -w '%{http_code}' -H "Host: $host" "$@" "$base$path")
  [ "$got" = "$want" ] || fail "GET $path $*: $got, expected $want"
}
check_http 301 /dashboard/login/
grep -qi "^location: https://$host/dashboard/login/" "$work/headers" || fail "no redirect to https"
check_http 200 /dashboard/login/ -H "X-Forwarded-Proto: https"
grep -qi "^strict-transport-security: max-age=31536000; includeSubDomains; preload" "$work/headers" || fail "no HSTS"
grep -qi "^set-cookie: *csrftoken=.*; Secure" "$work/headers" || fail "CSRF cookie not Secure"
for asset in vendor/htmx/htmx.min.js vendor/chartjs/chart.umd.min.js dashboard/app.js dashboard/app.css \
             ninja/swagger-ui-bundle.js admin/css/base.css; do
  check_http 200 "/static/$asset" -H "X-Forwarded-Proto: https"
done
check_http 200 /api/docs -H "X-Forwarded-Proto: https"
test "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: elsewhere.example' -H 'X-Forwarded-Proto: https' \
  "$base/dashboard/login/")" = 400 || fail "a Host outside DJANGO_ALLOWED_HOSTS was not refused"

say "manage: an admin key; the SDK-only wheel runs a workflow; the worker delivers its webhook"
key=$(role manage tidebase_key create deploy-smoke --scope admin 2> "$work/key.log") || fail "tidebase_key create"
test "$(curl -s -o /dev/null -w '%{http_code}' "$base/runs")" = 401 || fail "the API is open without a key"
TIDEBASE_URL=$base TIDEBASE_API_KEY=$key "$work/sdk/bin/python" - <<'EOF' || fail "the SDK-only wheel against the server"
import http.server, importlib.metadata, importlib.util, json, threading, time

from tidebase import Tidebase

assert importlib.metadata.packages_distributions()["tidebase"] == ["tidebase-django-sdk"]
assert importlib.util.find_spec("django") is None, "the SDK wheel pulled in Django"
received = []


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
hook = {"type": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/", "events": ["run.completed"]}
with Tidebase() as tide:
    result = tide.run("deploy-smoke", lambda run, n: run.step("double", lambda: n * 2), input=21, channels=[hook])
assert result == 42, result
deadline = time.monotonic() + 60
while not received and time.monotonic() < deadline:
    time.sleep(0.05)
assert received and received[0]["type"] == "run.completed", received
print(f"  run completed with {result}; webhook {received[0]['type']} delivered through the broker")
EOF

# ---- 4. backup and restore ---------------------------------------------------------------------
say "backup: pg_dump -Fc of the live database; restore into $restore_db"
pg_dump -Fc -d "$pg_base/$db" -f "$work/tidebase.dump" || fail "pg_dump"
psql -d "$pg_admin" -qc "CREATE DATABASE $restore_db" || fail "CREATE DATABASE $restore_db"
pg_restore --no-owner --no-acl -d "$pg_base/$restore_db" "$work/tidebase.dump" || fail "pg_restore"
role_on "$pg_base/$restore_db" manage migrate --check > "$work/restore-check.log" 2>&1 \
  || fail "the restored database lacks migrations"
counts='SELECT (SELECT count(*) FROM tb_run), (SELECT count(*) FROM tb_step), (SELECT count(*) FROM tb_event)'
live=$(psql -d "$pg_base/$db" -Atc "$counts")
restored=$(psql -d "$pg_base/$restore_db" -Atc "$counts")
[ "$live" = "$restored" ] || fail "restored rows $restored, live $live"
say "restore: every migration applied, runs|steps|events $restored as in the live database"

say "stop: SIGTERM to web, worker and beat"
for r in web worker beat; do
  eval "pid=\$pid_$r"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then fail "$r did not stop within 30 s of SIGTERM"; fi
  wait "$pid" && code=0 || code=$?
  say "  $r stopped (exit $code)"
done
pids=()

# ---- 5. Postgres with TLS ------------------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ "$(id -u)" = 0 ] && command -v runuser > /dev/null && [ -x "$pg_bin/initdb" ] && id postgres > /dev/null 2>&1; then
  say "Postgres with TLS only: a private cluster, DATABASE_URL with sslmode=verify-full"
  tls_port=$(free_port)
  mkdir -p "$work/tlspg"
  cp "$work/tls/server.crt" "$work/tls/server.key" "$work/tlspg/"
  chown -R postgres "$work/tlspg"
  chmod 600 "$work/tlspg/server.key"
  chmod o+x "$work"
  runuser -u postgres -- "$pg_bin/initdb" -D "$work/tlspg/data" -A trust -U postgres --no-sync > "$work/tlspg.log" 2>&1
  echo "hostssl all all 127.0.0.1/32 trust" > "$work/tlspg/data/pg_hba.conf"  # TLS or nothing
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/tlspg/data" -w -l "$work/tlspg/server.log" start -o \
    "-p $tls_port -k $work/tlspg -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off \
     -c ssl_cert_file=$work/tlspg/server.crt -c ssl_key_file=$work/tlspg/server.key" >> "$work/tlspg.log" 2>&1 \
    || fail "the TLS Postgres did not start"
  tls_url="postgres://postgres@localhost:$tls_port/postgres?sslmode=verify-full&sslrootcert=$work/tls/ca.crt"
  probe="from django.db import connection
with connection.cursor() as c:
    c.execute('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
    print(*c.fetchone())"
  got=$(role_on "$tls_url" manage shell -v 0 -c "$probe" 2> "$work/tls-probe.log") || fail "sslmode=verify-full did not connect"
  case "$got" in "True TLS"*) ;; *) fail "not TLS: $got" ;; esac
  if role_on "${tls_url%ca.crt}other-ca.crt" manage shell -v 0 -c "$probe" > "$work/tls-wrong-ca.log" 2>&1; then
    fail "a wrong CA was accepted"
  fi
  grep -q "certificate verify failed" "$work/tls-wrong-ca.log" || fail "a wrong CA failed for another reason"
  say "  verify-full: $got; a certificate from another CA is refused"
else
  say "Postgres with TLS NOT exercised (needs root, runuser and the server's initdb)"
fi

say "deploy smoke: OK"
