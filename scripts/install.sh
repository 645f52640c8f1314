#!/usr/bin/env bash
# Installs the project into ./.venv (created if absent): torch first (pinned CPU wheel), then everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system.sh
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install --quiet --disable-pip-version-check -e ".[test,solvers]"
python -c "import torch, monai, common; print(f'installed: torch {torch.__version__}, monai {monai.__version__}, common {common.__version__}')"
