#!/usr/bin/env bash
# Build dualcache's wheel from this checkout, install it with the `local` extra into a fresh virtualenv and
# use it as a service would (tests/install/wheel_smoke.py): the emulator, one DualCache, a miss then a KV hit.
#
# Usage: scripts/wheel-check.sh [PYTHON]   (PYTHON: the interpreter that builds and makes the venv; python3)
# pip's cache is used as usual (no --no-cache-dir), so a second run downloads nothing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/dualcache-wheel-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "wheel-check: building the wheel from $repo"
"$python" -m pip wheel "$repo" --no-deps --quiet --wheel-dir "$work/dist"
wheels=("$work"/dist/dualcache-*.whl)
wheel="${wheels[0]}"
echo "wheel-check: built $(basename "$wheel")"

echo "wheel-check: fresh virtualenv, installing the wheel with the local extra (about 15 packages)"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "dualcache[local] @ file://$wheel"

# From a directory outside the repository, in isolated mode (-I: no PYTHONPATH, no user site, and the
# script's own directory is not put on sys.path), so only the installed wheel can be imported.
cp "$repo/tests/install/wheel_smoke.py" "$work/wheel_smoke.py"
cd "$work"
"$work/venv/bin/python" -I wheel_smoke.py
