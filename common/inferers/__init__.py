"""Inferers for multi-task networks (whole-volume segmentation with case-level classification; two-stage fundus
disc crops)."""

from __future__ import annotations

from .disc_crop import DiscCropInferer, central_green_std
from .precision import PrecisionInferer
from .seg_class_sliding_window import SegClassSlidingWindowInferer
from .temperature import TemperatureScaledInferer

__all__ = [
    "DiscCropInferer",
    "PrecisionInferer",
    "SegClassSlidingWindowInferer",
    "TemperatureScaledInferer",
    "central_green_std",
]
