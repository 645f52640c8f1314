"""Per-task losses and the multi-task loss that handles missing labels."""

from __future__ import annotations

from .class_balance import binary_pos_weight
from .multitask import MultiTaskLoss, valid_sample_mask
from .reconstruction import MaskedMSELoss
