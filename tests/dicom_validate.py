"""Validate DICOM files against their IOD with ``dciodvfy`` (dicom3tools)."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["DCIODVFY", "dciodvfy_errors", "dciodvfy_report"]

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_report(path: str) -> str:
    """Return the full ``dciodvfy`` output (stdout and stderr) for ``path``."""
    if DCIODVFY is None:
        raise RuntimeError("dciodvfy (dicom3tools) is not on PATH: apt-get install dicom3tools.")
    result = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def dciodvfy_errors(path: str) -> list[str]:
    """Return the lines of ``dciodvfy``'s report on ``path`` that start with ``Error``."""
    return [line for line in dciodvfy_report(path).splitlines() if line.startswith("Error")]
