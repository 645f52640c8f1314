"""Ignite metric for masked image modelling inside a multi-task output."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.utils import CommonKeys as Keys

from .output_dict import OutputDictMetric

__all__ = ["MaskedMSE"]


class MaskedMSE(OutputDictMetric):
    """Mean squared reconstruction error over masked pixels, averaged over pixels of the whole data set.

    Reads ``output["pred"][task]``, the target ``output["label"][target_key]`` and the mask
    ``output["label"][mask_key]`` (1 = masked; all pixels when ``mask_key`` is None).

    :meth:`details` gives each sample's error ``<name>`` (its own masked pixels' mean) and ``<name>_pixels`` (its
    masked pixel count): their ``_pixels``-weighted mean is the data set's error.
    """


    def __init__(
        self, task: str = "mim", target_key: str = "image", mask_key: str | None = "mim_mask", device: str = "cpu"
    ) -> None:
        self.task, self.target_key, self.mask_key = task, target_key, mask_key
        super().__init__(output_transform=lambda x: x, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64)
        self._count = torch.tensor(0.0, dtype=torch.float64)
        self._sample_sums: list[np.ndarray] = []
        self._sample_counts: list[np.ndarray] = []

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        pred = output[Keys.PRED][self.task].detach().double().cpu()
        target = torch.as_tensor(output[Keys.LABEL][self.target_key]).detach().double().cpu()
        err = (pred - target) ** 2
        w = torch.ones_like(err)
        if self.mask_key is not None:
            w = torch.as_tensor(output[Keys.LABEL][self.mask_key]).detach().double().cpu().expand_as(err)
        self._sum += (err * w).sum()
        self._count += w.sum()
        self._sample_sums.append((err * w).reshape(err.shape[0], -1).sum(1).numpy())
        self._sample_counts.append(w.reshape(w.shape[0], -1).sum(1).numpy())

    def details(self, name: str) -> dict[str, np.ndarray]:
        sums = np.concatenate(self._sample_sums) if self._sample_sums else np.zeros(0)
        counts = np.concatenate(self._sample_counts) if self._sample_counts else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mse = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
        return {name: mse, f"{name}_pixels": counts}

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        return float(self._sum / self._count.clamp_min(1.0))
