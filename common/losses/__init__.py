"""Per-task losses and the multi-task loss that handles missing labels."""

from __future__ import annotations

from .multitask import MultiTaskLoss, valid_sample_mask
from .reconstruction import MaskedMSELoss
from .class_balance import binary_pos_weight
