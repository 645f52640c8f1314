"""MONAI-style transforms of the project."""

from __future__ import annotations

from .simmim_mask import SimMIMMaskd
