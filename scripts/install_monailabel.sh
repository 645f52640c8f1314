#!/usr/bin/env bash
# Creates ./.venv-monailabel: a separate environment for a MONAI Label 0.8.5 server (docs/monailabel.md).
#
# MONAI Label cannot share ./.venv: it needs pydicom<3 (through pydicom-seg) where the project pins pydicom 3.0.2
# for highdicom, and it imports torchvision, whose wheel must match the torch build. Our `common` package is NOT
# installed here: scripts/export_monailabel_bundle.py ships it inside each exported bundle, which keeps the bundles
# self-contained and this environment free of the project's DICOM pins.
#
# Idempotent: does nothing when the venv already imports monailabel at the pinned version.
# Other versions are pinned by scripts/monailabel-constraints.txt (pip freeze of the tested venv).
# Environment: PYTHON (interpreter for the venv, default python3); MONAILABEL_VENV (venv path); TORCH_INDEX_URL
# (optional extra index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu: CPU wheels, ~1 GB
# instead of ~8 GB with PyPI's CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MONAILABEL_VENV:-.venv-monailabel}"
PY="${PYTHON:-python3}"
MONAILABEL_VERSION=0.8.5
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
PIP=(--quiet --disable-pip-version-check --constraint scripts/monailabel-constraints.txt)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$MONAILABEL_VERSION" <<'PYCHECK' 2>/dev/null
import sys
import monailabel, torch, torchvision, pydicom, dcmqi, torchjd  # noqa: F401
from importlib.metadata import version
assert version("monailabel") == sys.argv[1]
assert version("torchjd") == "0.18.0"
assert int(pydicom.__version__.split(".")[0]) < 3
PYCHECK
then
    echo "$VENV: monailabel $MONAILABEL_VERSION already installed"
    exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
TORCH_ARGS=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    TORCH_ARGS=(--extra-index-url "$TORCH_INDEX_URL")  # its +cpu builds sort above the PyPI ones
fi
# torch and torchvision first, from the same build, so that monailabel's dependencies find them satisfied.
"$VENV/bin/python" -m pip install "${PIP[@]}" "${TORCH_ARGS[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# monailabel 0.8.5 accepts monai>=1.4; pin the project's monai so bundles run on the same version as in ./.venv.
"$VENV/bin/python" -m pip install "${PIP[@]}" "monailabel==$MONAILABEL_VERSION" "monai==1.6.1" \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# pydicom-seg (used by monailabel's DICOM datastore) needs pydicom<3, and the pynetdicom/dicomweb-client that go with it.
"$VENV/bin/python" -m pip install "${PIP[@]}" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60"
# dcmqi's itkimage2segimage: without it a DICOMweb datastore downloads the binaries from GitHub at server start.
"$VENV/bin/python" -m pip install "${PIP[@]}" "dcmqi==1.5.7"
# The bundles' `common` (shipped inside each exported bundle) imports TorchJD (multi-task weighting methods; its core
# needs only torch); MONAI Label's trainer runs train.json in this environment.
"$VENV/bin/python" -m pip install "${PIP[@]}" "torchjd==0.18.0"
"$VENV/bin/python" -c "import monailabel, monai, torch, torchvision, pydicom; print(f'installed in $VENV: monailabel \
{monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, \
pydicom {pydicom.__version__}')"
echo "$VENV: $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
