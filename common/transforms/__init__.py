"""MONAI-style transforms of the project, and the tensor functions they are built from."""

from __future__ import annotations

from .case_checks import CheckMultimodalCased
from .class_labels import MaskLabelOutsideForegroundd
from .colour_image import CheckColourImaged, FrameContrastd, central_green_std, photo_to_rgb
from .disc_crop import DiscCropd, crop_box_from_mask, crop_square, paste_crop
from .intensity import AdaptiveHistogramEqualized, standardize_channels
from .load_case import LoadCaseImaged
from .seg_regions import KeepOneComponentLogits, SegRegionsd, keep_largest_component_logits, regions_to_label_map
from .simmim_mask import SimMIMMaskd

__all__ = [
    "AdaptiveHistogramEqualized",
    "CheckColourImaged",
    "CheckMultimodalCased",
    "DiscCropd",
    "FrameContrastd",
    "KeepOneComponentLogits",
    "LoadCaseImaged",
    "MaskLabelOutsideForegroundd",
    "SegRegionsd",
    "SimMIMMaskd",
    "central_green_std",
    "crop_box_from_mask",
    "crop_square",
    "keep_largest_component_logits",
    "paste_crop",
    "photo_to_rgb",
    "regions_to_label_map",
    "standardize_channels",
]
