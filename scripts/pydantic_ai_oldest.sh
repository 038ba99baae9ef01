#!/usr/bin/env bash
# Run tests/pydantic_ai against the OLDEST supported pydantic-ai-slim (default 2.62.0).
#
# Builds var/pai-oldest: a venv whose own site-packages hold only pydantic-ai-slim and
# pydantic-graph at that version; everything else comes from .venv (a .pth file appends
# .venv's site-packages, so the older pydantic_ai shadows the newer one).
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/pydantic_ai_oldest.sh [VERSION] [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-2.62.0}"
shift || true
VENV="var/pai-oldest"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pydantic-ai-slim') != '$VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  .venv/bin/python -m venv "$VENV"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  MAIN_SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$PWD" > "$SITE/tidebase_repo.pth"
  echo "$MAIN_SITE" > "$SITE/zz_main_venv.pth"
  "$VENV/bin/python" -m pip install -q --no-deps "pydantic-ai-slim==$VERSION" "pydantic-graph==$VERSION"
fi
"$VENV/bin/python" -c "import pydantic_ai, importlib.metadata as m; print('pydantic-ai-slim', m.version('pydantic-ai-slim'), pydantic_ai.__file__)"
export TIDEBASE_TEST_DATABASE_NAME="${TIDEBASE_TEST_DATABASE_NAME:-test_tb_pydantic_ai_oldest}"
exec "$VENV/bin/python" -m pytest tests/pydantic_ai -q -p no:randomly "$@"
