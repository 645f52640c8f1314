"""Inferers for multi-task networks (whole-volume segmentation with case-level classification; two-stage fundus
disc crops)."""

from __future__ import annotations

from .calibrated import CalibratedInferer
from .disc_crop import DiscCropInferer, central_green_std
from .precision import PrecisionInferer
from .seg_class_sliding_window import SegClassSlidingWindowInferer

__all__ = [
    "CalibratedInferer",
    "DiscCropInferer",
    "PrecisionInferer",
    "SegClassSlidingWindowInferer",
    "central_green_std",
]
