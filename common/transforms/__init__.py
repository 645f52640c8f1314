"""MONAI-style transforms of the project."""

from __future__ import annotations

from .case_checks import CheckMultimodalCased
from .class_labels import MaskLabelOutsideForegroundd
from .colour_image import CheckColourImaged
from .disc_crop import DiscCropd, crop_box_from_mask, crop_square, paste_crop
from .seg_regions import KeepOneComponentLogits, SegRegionsd, keep_largest_component_logits, regions_to_label_map
from .simmim_mask import SimMIMMaskd
