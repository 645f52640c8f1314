"""Per-task losses, the multi-task loss that handles missing labels, and masked per-factor losses."""

from __future__ import annotations

from .class_balance import binary_pos_weight
from .factors import MaskedFactorLoss
from .multitask import MultiTaskLoss, valid_sample_mask
from .reconstruction import MaskedL1Loss, MaskedMSELoss

__all__ = [
    "MaskedFactorLoss",
    "MaskedL1Loss",
    "MaskedMSELoss",
    "MultiTaskLoss",
    "binary_pos_weight",
    "valid_sample_mask",
]
