#!/usr/bin/env bash
# System packages the DICOM/PACS features and their tests use (Debian): Orthanc + its DICOMweb plugin (a real PACS
# for the tests), dcmtk, and dicom3tools (dciodvfy validates every DICOM object the tests write).
# Needs root (or sudo); skipped with a message otherwise, and the tests that need these tools then skip.
set -euo pipefail
PKGS=(orthanc orthanc-dicomweb dcmtk dicom3tools iproute2)
missing=()
for p in "${PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_system.sh: not root and no sudo; not installing ${missing[*]} (DICOM/PACS tests will skip)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed system packages: ${missing[*]}"
