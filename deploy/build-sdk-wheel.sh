#!/usr/bin/env bash
# Build the SDK-only wheel (tidebase-django-sdk: the `tidebase` package and httpx, no server)
# into OUTDIR. scripts/deploy_smoke.sh builds it, installs it into a fresh virtualenv and drives
# a live server with it.
#
#   bash deploy/build-sdk-wheel.sh OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: $0 OUTDIR" >&2; exit 64; fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/sdk/pyproject.toml" "$here/sdk/README.md" "$work/"
(cd "$here/.." && tar --exclude=__pycache__ --exclude='*.pyc' -cf - tidebase) | tar -xf - -C "$work"
"$python" -m pip wheel -q --no-deps -w "$out" "$work"
ls "$out"/tidebase_django_sdk-*.whl
