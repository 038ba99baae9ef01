#!/usr/bin/env bash
# The build step of the container image (Dockerfile), also run in CI by scripts/deploy_smoke.sh:
#
#   bash deploy/build.sh SRC PREFIX
#
# 1. builds the wheel from a clean copy of the source tree SRC (never from SRC itself: a stale
#    build/ folder there would ship modules deleted since);
# 2. installs it with the pinned dependencies (SRC/requirements.lock) into a new virtualenv PREFIX;
# 3. installs the entry point (deploy/entrypoint.sh) as PREFIX/bin/tidebase-entrypoint;
# 4. collects the static files into $DJANGO_STATIC_ROOT (default PREFIX/staticfiles).
#
# PYTHON picks the interpreter (default python3, 3.11+). PIP_* variables reach pip as usual.
# The wheel itself is left in PREFIX/wheel/ (`pip install` it elsewhere: docs/deploy.md).
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 SRC PREFIX" >&2; exit 64; fi
src=$(cd "$1" && pwd)
prefix=$2
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. A clean copy: in a git checkout the files git knows (tracked or not ignored), else everything
#    but build outputs.
mkdir "$work/src"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$src" && git ls-files -z --cached --others --exclude-standard \
    | "$python" -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))' \
    | tar --null -T - -cf -) | tar -xf - -C "$work/src"
else
  (cd "$src" && tar --exclude=./build --exclude=./dist --exclude='./*.egg-info' -cf - .) | tar -xf - -C "$work/src"
fi

"$python" -m venv "$prefix"
mkdir -p "$prefix/wheel"
rm -f "$prefix"/wheel/tidebase_django-*.whl
"$prefix/bin/pip" wheel -q --no-deps -w "$prefix/wheel" "$work/src"

# 2. The wheel and its dependencies at the versions CI tested (requirements.lock).
"$prefix/bin/pip" install -q --no-warn-script-location -c "$work/src/requirements.lock" "$prefix"/wheel/tidebase_django-*.whl

# 3. The entry point: one role per container (web, worker, beat, migrate, check, manage).
install -m 0755 "$work/src/deploy/entrypoint.sh" "$prefix/bin/tidebase-entrypoint"

# 4. Static files. A placeholder DATABASE_URL: settings parse it, collectstatic never connects
#    (unset, settings would start the embedded Postgres).
DJANGO_STATIC_ROOT=${DJANGO_STATIC_ROOT:-$prefix/staticfiles} \
  DATABASE_URL=postgres://unused@127.0.0.1/unused \
  "$prefix/bin/tidebase-server" collectstatic --noinput --clear -v 0

echo "built $(basename "$prefix"/wheel/tidebase_django-*.whl) into $prefix"
