"""Per-case Dice and HD95 of one segmentation task inside a multi-task output."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.utils import CommonKeys as Keys

from .output_dict import OutputDictMetric

__all__ = ["SegmentationTaskMetrics"]


class SegmentationTaskMetrics(OutputDictMetric):
    """Dice and 95th-percentile Hausdorff distance per case and region, averaged over cases, then over regions.

    Reads ``output["pred"][task]`` (logits ``(B, R, *spatial)``, sigmoid per region channel) and
    ``output["label"][label_key]`` (binary ``(B, R, *spatial)``). Each batch item is one case (whole-volume
    evaluation). A case with an empty ground truth scores Dice 1 if the prediction is empty too, else 0. HD95 is
    undefined when the prediction or the ground truth of a region is empty: such (case, region) pairs are left out
    of the HD95 mean and counted in ``hd95_undefined``. HD95 is in the units of ``spacing_key``'s per-case voxel
    spacing (mm from the NIfTI header), or in voxels without it.

    ``compute`` returns ``{p}dice_mean``, ``{p}hd95_mean``, ``{p}dice_<region>``, ``{p}hd95_<region>``,
    ``{p}hd95_undefined`` and ``{p}n_cases`` where ``p`` is ``prefix + "_"`` (or nothing for ``prefix=""``).
    :meth:`details` gives each case's Dice and HD95 under the same names (per region; ``dice_mean``/``hd95_mean``
    the case's mean over regions, HD95 NaN where undefined): the mean over cases of a per-case Dice column is the
    Dice of ``compute``.

    Args:
        task: key of the segmentation logits in the prediction dict.
        regions: region names, one per channel.
        label_key: key of the binary region targets in the targets dict.
        spacing_key: key of per-case voxel spacing ``(B, 3)`` in the targets dict (None: voxels).
        threshold: probability threshold.
        prefix: key prefix.
        region_first: name per-region keys ``{p}<region>_dice`` / ``{p}<region>_hd95`` instead.
        count_key: key of the number of cases (default ``{p}n_cases``).
    """

    def __init__(
        self,
        task: str,
        regions: Sequence[str],
        label_key: str = Keys.LABEL,
        spacing_key: str | None = "spacing",
        threshold: float = 0.5,
        prefix: str = "",
        region_first: bool = False,
        count_key: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not regions:
            raise ValueError("regions must name at least one region.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.task, self.regions, self.label_key, self.spacing_key = task, list(regions), label_key, spacing_key
        self.threshold = threshold
        self.p = f"{prefix}_" if prefix else ""
        self.region_first = bool(region_first)
        self.count_key = count_key or f"{self.p}n_cases"
        super().__init__(output_transform=lambda x: x, device=device, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._dice: list[np.ndarray] = []
        self._hd95: list[np.ndarray] = []

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        logits = output[Keys.PRED][self.task].detach().float()
        target = torch.as_tensor(output[Keys.LABEL][self.label_key]).detach().to(logits.device)
        if logits.shape != target.shape:
            raise ValueError(
                f"task '{self.task}': prediction shape {tuple(logits.shape)} != label shape {tuple(target.shape)}."
            )
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"task '{self.task}': {logits.shape[1]} channels for regions {self.regions}.")
        pred = (torch.sigmoid(logits) >= self.threshold).float()
        target = (target > 0.5).float()
        self._dice.append(compute_dice(pred, target, include_background=True, ignore_empty=False).cpu().numpy())
        spacing = output[Keys.LABEL].get(self.spacing_key) if self.spacing_key else None
        rows = []
        for i in range(pred.shape[0]):
            sp = (
                None
                if spacing is None
                else [float(s) for s in torch.as_tensor(spacing[i]).reshape(-1)[: pred.dim() - 2]]
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns on every empty mask; those pairs are counted instead
                hd = compute_hausdorff_distance(
                    pred[i : i + 1], target[i : i + 1], include_background=True, percentile=95, spacing=sp
                )
            rows.append(hd.cpu().numpy()[0])
        self._hd95.append(np.stack(rows))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n_cases, n_regions)`` Dice and HD95 (NaN where undefined)."""
        dice = np.concatenate(self._dice) if self._dice else np.zeros((0, len(self.regions)))
        hd95 = np.concatenate(self._hd95) if self._hd95 else np.zeros((0, len(self.regions)))
        return dice, np.where(np.isfinite(hd95), hd95, np.nan)

    def _key(self, kind: str, region: str) -> str:
        return f"{self.p}{region}_{kind}" if self.region_first else f"{self.p}{kind}_{region}"

    def details(self, name: str) -> dict[str, np.ndarray]:
        dice, hd95 = self._arrays()
        out: dict[str, np.ndarray] = {}
        for r, region in enumerate(self.regions):
            out[self._key("dice", region)] = dice[:, r].astype(float)
            out[self._key("hd95", region)] = hd95[:, r].astype(float)
        n = len(dice)
        out[f"{self.p}dice_mean"] = dice.mean(axis=1) if n else np.zeros(0)
        defined = np.isfinite(hd95).any(axis=1)
        hd_mean = np.full(n, np.nan)
        hd_mean[defined] = np.nanmean(hd95[defined], axis=1)
        out[f"{self.p}hd95_mean"] = hd_mean
        return out

    def compute(self) -> dict[str, float]:
        dice, hd95 = self._arrays()
        out: dict[str, float] = {}
        dice_r, hd_r = [], []
        for r, name in enumerate(self.regions):
            d = float(np.mean(dice[:, r])) if len(dice) else float("nan")
            h = float(np.nanmean(hd95[:, r])) if np.isfinite(hd95[:, r]).any() else float("nan")
            out[self._key("dice", name)], out[self._key("hd95", name)] = d, h
            dice_r.append(d)
            hd_r.append(h)
        out[f"{self.p}dice_mean"] = float(np.mean(dice_r)) if len(dice) else float("nan")
        out[f"{self.p}hd95_mean"] = float(np.nanmean(hd_r)) if np.isfinite(hd_r).any() else float("nan")
        out[f"{self.p}hd95_undefined"] = int(np.isnan(hd95).sum())
        out[self.count_key] = int(len(dice))
        return out
