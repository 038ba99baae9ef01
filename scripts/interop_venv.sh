#!/usr/bin/env bash
# The official client (tidebase==0.7.0 from PyPI) shares its import name with our SDK, so it
# lives in its own virtualenv: var/interop-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x var/interop-venv/bin/python ] || ! var/interop-venv/bin/python -c "import tidebase" 2>/dev/null; then
  python3 -m venv var/interop-venv
  var/interop-venv/bin/pip install -q --disable-pip-version-check "tidebase==0.7.0"
fi
