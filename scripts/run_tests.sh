#!/usr/bin/env bash
# The README's test command: install everything, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -ra "$@"
