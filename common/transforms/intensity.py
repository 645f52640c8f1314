"""Intensity normalisation of image tensors: per-channel standardisation, contrast-limited adaptive histogram
equalisation (CLAHE) of photographs."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, optional_import

exposure, _ = optional_import("skimage.exposure")

__all__ = ["AdaptiveHistogramEqualized", "standardize_channels"]


def standardize_channels(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit variance per image and channel over the spatial dims (``(B, C, H, W)``)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)


class AdaptiveHistogramEqualized(MapTransform):
    """Contrast-limited adaptive histogram equalisation (CLAHE, scikit-image's ``equalize_adapthist``) of a
    channel-first 2-D image: a colour (3-channel) photograph is equalised on its HSV value channel (hue and
    saturation kept), a 1-channel image directly. Fundus pipelines use it to even out illumination and bring out
    vessels and the disc (e.g. SePL); it is deterministic, so a cached pipeline computes it once per image.

    Args:
        keys: keys of the images (``(C, H, W)``, values in ``[0, value_range]``).
        clip_limit: scikit-image's clip limit in (0, 1] (higher: more contrast); ``None`` leaves the image as it is,
            so a config can switch the step off with one key.
        kernel_size: side of the contextual regions in pixels (scikit-image's default, 1/8 of each side, when None).
        value_range: the images' maximum value (255 for 8-bit photographs before scaling); the output keeps it.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float | None = 0.01,
        kernel_size: int | Sequence[int] | None = None,
        value_range: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if clip_limit is not None and not 0 < clip_limit <= 1:
            raise ValueError(f"clip_limit must be in (0, 1] or None, got {clip_limit}.")
        if value_range <= 0:
            raise ValueError(f"value_range must be positive, got {value_range}.")
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size
        self.value_range = float(value_range)

    def equalize(self, img: Any) -> Any:
        """CLAHE of one channel-first image, same type (tensor / MetaTensor / array) and range as the input."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise ValueError(f"AdaptiveHistogramEqualized needs a (1 or 3, H, W) image, got shape {arr.shape}.")
        scaled = np.clip(arr.astype(np.float64) / self.value_range, 0.0, 1.0)
        hwc = np.moveaxis(scaled, 0, -1) if arr.shape[0] == 3 else scaled[0]
        out = exposure.equalize_adapthist(hwc, kernel_size=self.kernel_size, clip_limit=self.clip_limit)
        out = (np.moveaxis(out, -1, 0) if arr.shape[0] == 3 else out[None]) * self.value_range
        return convert_to_dst_type(out, dst=img, dtype=img.dtype)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.clip_limit is None:
            return d
        for key in self.key_iterator(d):
            d[key] = self.equalize(d[key])
        return d
