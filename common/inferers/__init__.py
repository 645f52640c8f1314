"""Inferers for multi-task networks (whole-volume segmentation with case-level classification)."""

from __future__ import annotations

from .seg_class_sliding_window import SegClassSlidingWindowInferer
