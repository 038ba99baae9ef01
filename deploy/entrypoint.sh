#!/bin/sh
# Entry point of the container image (installed as PREFIX/bin/tidebase-entrypoint by
# deploy/build.sh; scripts/deploy_smoke.sh starts every role through it in CI). One role per
# container; configuration comes from the environment (README "Configuration", docs/deploy.md).
#
#   web       the API and dashboard (tidebase_serve) on $TIDEBASE_HOST:$PORT (0.0.0.0:7373);
#             refuses to start with pending migrations unless TIDEBASE_AUTO_MIGRATE=1
#   worker    a webhook worker (tidebase_worker --no-beat); run as many as you like
#   beat      the reconciler and delivery-sweep clock (tidebase_beat); one is enough
#   migrate   apply migrations, then exit (run once per release, before the new web/worker)
#   check     manage.py check --deploy --fail-level WARNING: the production checklist
#   manage    any management command: manage tidebase_createadmin alice, manage tidebase_key list
#
# Extra arguments go to the command (web --workers 4, worker --concurrency 32).
set -eu
bin=$(dirname "$(readlink -f "$0")")
server="$bin/tidebase-server"
role=${1:-web}
[ $# -gt 0 ] && shift

case "$role" in
  web)
    export TIDEBASE_AUTO_MIGRATE="${TIDEBASE_AUTO_MIGRATE:-0}"
    exec "$server" tidebase_serve --host "${TIDEBASE_HOST:-0.0.0.0}" --port "${PORT:-7373}" "$@"
    ;;
  worker) exec "$server" tidebase_worker --no-beat "$@" ;;
  beat) exec "$server" tidebase_beat "$@" ;;
  migrate) exec "$server" migrate --noinput "$@" ;;
  check) exec "$server" check --deploy --fail-level WARNING "$@" ;;
  manage) exec "$server" "$@" ;;
  *)
    echo "usage: tidebase-entrypoint web|worker|beat|migrate|check|manage [ARGS...]" >&2
    exit 64
    ;;
esac
