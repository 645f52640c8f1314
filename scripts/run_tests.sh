#!/usr/bin/env bash
# The README's test command: install everything, lint (ruff), then run the whole test suite; arguments go to
# pytest (`-m "not slow"`: the fast lane).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# MONAI Label needs its own environment (docs/monailabel.md); one per machine, reused by every checkout's tests.
export MONAILABEL_VENV="${MONAILABEL_VENV:-$HOME/.cache/mtl-monai-bundles/venv-monailabel}"
bash scripts/install_monailabel.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
python -m pytest -ra "$@"
