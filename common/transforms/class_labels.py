"""Case-level class labels on random crops."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["MaskLabelOutsideForegroundd"]


class MaskLabelOutsideForegroundd(MapTransform):
    """Mark a case-level label (e.g. IDH status) unknown on a crop that holds no foreground of ``seg_key``.

    A crop without tumour says nothing about the tumour's genotype; marking its label ``missing_value`` makes the
    multi-task loss skip it for that task while the crop still trains segmentation.

    Args:
        keys: case-level label key(s).
        seg_key: key of the crop's segmentation target (any channel > 0 counts as foreground).
        missing_value: value meaning "unknown".
        min_voxels: foreground voxels a crop needs to keep its label.
    """

    def __init__(
        self,
        keys: KeysCollection,
        seg_key: str = "label",
        missing_value: float = -1,
        min_voxels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_voxels < 1:
            raise ValueError(f"min_voxels must be >= 1, got {min_voxels}.")
        self.seg_key, self.missing_value, self.min_voxels = seg_key, missing_value, min_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fg = int((torch.as_tensor(d[self.seg_key]) > 0).any(dim=0).sum())
        if fg < self.min_voxels:
            for key in self.key_iterator(d):
                value = d[key]
                d[key] = (
                    torch.full_like(value, self.missing_value)
                    if isinstance(value, torch.Tensor)
                    else self.missing_value
                )
        return d
