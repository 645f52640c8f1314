"""Segmentation targets as region channels (e.g. BraTS whole tumour / tumour core / enhancing) from a label map."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage

__all__ = ["KeepOneComponentLogits", "SegRegionsd", "keep_largest_component_logits", "regions_to_label_map"]


def _check_regions(regions: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    if not regions:
        raise ValueError("regions must name at least one region, e.g. {'lesion': [1]}.")
    out = {}
    for name, labels in regions.items():
        values = [
            int(v) for v in (labels if isinstance(labels, Sequence) and not isinstance(labels, str) else [labels])
        ]
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"regions['{name}'] must list positive label values, got {labels!r}.")
        out[str(name)] = values
    return out


class SegRegionsd(MapTransform):
    """Turn a label map ``(1, *spatial)`` into one binary channel per region ``(R, *spatial)`` (float).

    Region ``r`` is the union of its labels, so regions may overlap (BraTS: ``{"wt": [1, 2, 3, 4], "tc": [1, 3, 4],
    "et": [4]}``); a binary abnormality mask is ``{"abnormal": [1]}``. Meta data (affine) are kept.

    Args:
        keys: label map key(s).
        regions: region name -> label values, in output channel order.
    """

    def __init__(self, keys: KeysCollection, regions: Mapping[str, Sequence[int]], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.regions = _check_regions(regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            lab = torch.as_tensor(label)
            if lab.shape[0] != 1:
                raise ValueError(f"{key}: expected a channel-first label map (1, ...), got shape {tuple(lab.shape)}.")
            values = lab[0].round().long()
            channels = [torch.isin(values, torch.tensor(v, device=values.device)) for v in self.regions.values()]
            out = torch.stack(channels).float()
            d[key] = (
                MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
                if isinstance(label, MetaTensor)
                else out
            )
        return d


def regions_to_label_map(masks: torch.Tensor) -> torch.Tensor:
    """Collapse binary region channels ``(R, *spatial)`` to a label map: voxel = 1-based index of the last region
    holding it (regions listed from outermost to innermost, e.g. wt, tc, et -> 1, 2, 3), 0 = background."""
    masks = torch.as_tensor(masks) > 0.5
    index = torch.arange(1, masks.shape[0] + 1, device=masks.device).view(-1, *([1] * (masks.dim() - 1)))
    return (masks * index).amax(dim=0).to(torch.uint8)


class KeepOneComponentLogits:
    """Post-process sigmoid segmentation logits ``(B, R, *spatial)``: in each case and region, keep one connected
    component of the thresholded mask; voxels of the others get logit ``min(logit, floor)`` (probability ~0).

    Stray false-positive blobs away from the tumour lower per-case Dice; Buda et al. (2019) post-process TCGA-LGG by
    keeping the largest component. ``rank="peak"`` keeps the component holding the highest logit instead (the one
    the network is surest of; ties go to the larger): on TCGA-LGG a large hyperintense false positive can outsize a
    small tumour that the network marks with higher confidence (docs of glioma_seg_idh). Regions are processed
    independently (e.g. BraTS wt, tc, et each keep one component).

    Args:
        rank: ``"peak"`` (highest logit) or ``"size"`` (most voxels).
        threshold: probability threshold of the mask.
        floor: logit given to removed voxels.
    """

    def __init__(self, rank: str = "peak", threshold: float = 0.5, floor: float = -20.0) -> None:
        if rank not in ("peak", "size"):
            raise ValueError(f"rank must be 'peak' or 'size', got '{rank}'.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.rank, self.threshold, self.floor = rank, threshold, floor

    def _keep(self, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.rank == "size":
            return get_largest_connected_component_mask(mask, connectivity=None) > 0
        labels, n = ndimage.label(mask.cpu().numpy(), structure=np.ones((3,) * mask.ndim))  # full connectivity
        if n <= 1:
            return mask
        size = np.bincount(labels.ravel())[1:]
        peak = ndimage.maximum(logits.detach().float().cpu().numpy(), labels, np.arange(1, n + 1))
        best = int(np.lexsort((size, peak))[-1]) + 1  # highest peak, then most voxels
        return torch.as_tensor(labels == best, device=mask.device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.numel() == 0:
            return logits
        mask = torch.sigmoid(logits.float()) >= self.threshold
        keep = torch.zeros_like(mask)
        for b in range(mask.shape[0]):
            for r in range(mask.shape[1]):
                keep[b, r] = self._keep(mask[b, r], logits[b, r])
        return torch.where(mask & ~keep, torch.clamp(logits, max=self.floor), logits)


def keep_largest_component_logits(logits: torch.Tensor, threshold: float = 0.5, floor: float = -20.0) -> torch.Tensor:
    """:class:`KeepOneComponentLogits` with ``rank="size"``: keep the largest connected component."""
    return KeepOneComponentLogits("size", threshold, floor)(logits)
