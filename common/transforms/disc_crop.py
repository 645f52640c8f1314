"""Crop a square region around the optic disc of a fundus photograph, and paste crop predictions back.

Geometry is kept in a *crop box* ``(centre_row, centre_col, side)`` in pixels of the full image (channel-first
``(C, H, W)`` arrays, rows = vertical). Crops are resampled with ``grid_sample`` (zeros outside the image), so a
disc near the border still gives a centred crop, and :func:`paste_crop` is the exact inverse mapping.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["DiscCropd", "crop_box_from_mask", "crop_square", "paste_crop"]


def crop_box_from_mask(mask: torch.Tensor | np.ndarray, crop_factor: float, threshold: float = 0.5) -> tuple | None:
    """Crop box ``(centre_row, centre_col, side)`` around the pixels of ``mask`` (``(H, W)`` or ``(1, H, W)``) above
    ``threshold``: centred on their bounding box, side ``crop_factor`` times its larger extent; None if empty."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    m = m.reshape(m.shape[-2], m.shape[-1]) > threshold
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    if rows.numel() == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (r0 + r1) / 2.0, (c0 + c1) / 2.0, float(crop_factor) * max(r1 - r0, c1 - c0)


def _grid(box: Sequence[float], height: int, width: int, out_size: int, device: torch.device) -> torch.Tensor:
    """Sampling grid (normalised, align_corners=False) of an ``out_size`` square over ``box`` in an H x W image."""
    cr, cc, side = (float(v) for v in box)
    step = side / out_size
    offs = (torch.arange(out_size, dtype=torch.float32, device=device) + 0.5) * step - side / 2.0
    ys = (cr + offs) / height * 2.0 - 1.0
    xs = (cc + offs) / width * 2.0 - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)[None]


def crop_square(image: torch.Tensor, box: Sequence[float], out_size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resample the square ``box`` of ``image`` (``(C, H, W)`` or ``(B, C, H, W)``, one box for all) to
    ``out_size`` x ``out_size`` pixels; zeros outside the image."""
    x = torch.as_tensor(image)
    batched = x.dim() == 4
    x4 = (x if batched else x[None]).float()
    grid = _grid(box, x4.shape[-2], x4.shape[-1], out_size, x4.device).expand(x4.shape[0], -1, -1, -1)
    out = F.grid_sample(x4, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out if batched else out[0]


def paste_crop(
    crop: torch.Tensor, box: Sequence[float], height: int, width: int, fill: float = 0.0, mode: str = "bilinear"
) -> torch.Tensor:
    """Map a crop (``(B, C, S, S)``, e.g. logits) made by :func:`crop_square` back onto a ``height`` x ``width``
    image; pixels outside the box get ``fill`` (e.g. a very negative logit)."""
    cr, cc, side = (float(v) for v in box)

    out = crop.new_full((*crop.shape[:-2], height, width), fill)
    r0, r1 = max(0, int(np.floor(cr - side / 2))), min(height, int(np.ceil(cr + side / 2)))
    c0, c1 = max(0, int(np.floor(cc - side / 2))), min(width, int(np.ceil(cc + side / 2)))
    if r1 <= r0 or c1 <= c0:
        return out
    # full-image pixel centres -> crop coordinates, normalised for grid_sample(align_corners=False)
    ys = ((torch.arange(r0, r1, dtype=torch.float32, device=crop.device) + 0.5) - (cr - side / 2)) / side * 2 - 1
    xs = ((torch.arange(c0, c1, dtype=torch.float32, device=crop.device) + 0.5) - (cc - side / 2)) / side * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1)[None].expand(crop.shape[0], -1, -1, -1)
    patch = F.grid_sample(crop.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    inside = (gx.abs() <= 1) & (gy.abs() <= 1)
    out[..., r0:r1, c0:c1] = torch.where(inside, patch.to(out.dtype), out[..., r0:r1, c0:c1])
    return out


class DiscCropd(RandomizableTransform, MapTransform):
    """Crop ``keys`` around the optic disc of ``box_key``'s mask and resample them to ``out_size`` squares.

    The box is centred on the bounding box of the disc mask (soft maps above ``threshold``) with side
    ``crop_factor`` times the disc's larger extent. For training, ``centre_jitter`` (fraction of the side) and
    ``scale_range`` (``(low, high)`` factor on the side) move and resize the box at random, so that the model
    learns crops as imprecise as a localiser's. The box is stored under ``"crop_box"``. Images without a disc
    mask (or an empty one) raise ``ValueError`` naming the case: crops need a disc.

    Args:
        keys: keys to crop (image and masks).
        box_key: key of the disc mask the box is computed from.
        out_size: side of the output squares in pixels.
        crop_factor: box side relative to the disc's extent.
        threshold: mask threshold for the disc's extent.
        centre_jitter: largest random shift of the centre, as a fraction of the side (0: none).
        scale_range: random factor range on the side (``(1, 1)``: none).
        prob: probability of random jitter.
        case_key: key of the case id in messages.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        box_key: str = "disc",
        out_size: int = 160,
        crop_factor: float = 2.0,
        threshold: float = 0.5,
        centre_jitter: float = 0.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        prob: float = 1.0,
        case_key: str = "case",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if out_size < 8:
            raise ValueError(f"out_size must be >= 8, got {out_size}.")
        if crop_factor <= 0:
            raise ValueError(f"crop_factor must be > 0, got {crop_factor}.")
        if centre_jitter < 0 or len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"centre_jitter must be >= 0 and scale_range (low, high) with 0 < low <= high; got {centre_jitter}, "
                f"{list(scale_range)}."
            )
        self.box_key, self.out_size, self.crop_factor, self.threshold = box_key, int(out_size), crop_factor, threshold
        self.centre_jitter, self.scale_range, self.case_key = float(centre_jitter), tuple(scale_range), case_key
        self._shift, self._scale = (0.0, 0.0), 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            j = self.centre_jitter
            self._shift = (float(self.R.uniform(-j, j)), float(self.R.uniform(-j, j)))
            self._scale = float(np.exp(self.R.uniform(np.log(self.scale_range[0]), np.log(self.scale_range[1]))))
        else:
            self._shift, self._scale = (0.0, 0.0), 1.0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        box = crop_box_from_mask(d[self.box_key], self.crop_factor, self.threshold)
        if box is None:
            raise ValueError(f"case '{d.get(self.case_key, '?')}': the disc mask '{self.box_key}' is empty.")
        self.randomize()
        cr, cc, side = box
        side *= self._scale
        box = (cr + self._shift[0] * side, cc + self._shift[1] * side, side)
        for key in self.key_iterator(d):
            d[key] = crop_square(d[key], box, self.out_size)
        d["crop_box"] = torch.tensor(box, dtype=torch.float32)
        return d
