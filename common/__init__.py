"""Shared library of the multi-task MONAI bundles: networks, losses, weighting methods, engines, data tools."""

from __future__ import annotations

__version__ = "0.1.0"
