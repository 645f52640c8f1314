"""Ignite metric of every factor of a risk-factor table, in original units, skipping missing values per factor."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.utils import CommonKeys as Keys

from ..data.factors import FactorTable
from .bootstrap import case_bootstrap_ci
from .calibration import UNCALIBRATED_SUFFIX, calibration_scores
from .classification import balanced_accuracy, roc_auc
from .output_dict import OutputDictMetric
from .reliability_diagram import draw_reliability_diagram

__all__ = ["FactorMetrics", "mae", "rmse"]


def mae(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Mean absolute error (nan without samples)."""
    return float(np.mean(np.abs(np.asarray(y_pred) - np.asarray(y_true)))) if len(y_true) else float("nan")


def rmse(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Root mean squared error (nan without samples)."""
    return float(np.sqrt(np.mean((np.asarray(y_pred) - np.asarray(y_true)) ** 2))) if len(y_true) else float("nan")


class FactorMetrics(OutputDictMetric):
    """Per-factor metrics of a network returning ``{factor: (B, 1)}``, with patient-level bootstrap 95% CIs.

    Regression factors (predictions in original units): ``<factor>_mae``, ``<factor>_rmse`` and the CI of the
    MAE. Binary factors (logits): ``<factor>_auc`` of the **probabilities** (never of thresholded
    predictions) with ``_ci_low``/``_ci_high``, ``<factor>_accuracy`` and ``<factor>_balanced_accuracy`` at
    ``threshold``, ``<factor>_ece`` and ``<factor>_brier`` (:mod:`common.metrics.calibration`; with
    ``<factor>_ece_uncalibrated``/``<factor>_brier_uncalibrated`` too when the predictions hold the logits before
    temperature scaling, ``<factor>_uncalibrated``). Every factor also gets ``<factor>_n`` (images with a known
    value). Missing values (NaN in the targets) are skipped per factor. Also ``n_images``, ``n_patients`` and
    ``score``: the mean over factors of the AUC (binary) and ``1 - MAE / scale`` (regression), higher is better,
    for model selection.

    :meth:`details` gives every image's ``<factor>_label`` (NaN where missing) and, for a binary factor,
    ``<factor>_prob`` and ``<factor>_accuracy`` (1 right, 0 wrong), for a regression factor ``<factor>_pred`` and
    ``<factor>_mae`` (the absolute error): per-image values whose mean (or, for the probabilities, ROC-AUC) over the
    images with a label is the metric of the same name.

    Args:
        factors: the factor table.
        target_key: key of the ``(B, n_factors)`` values in the targets dict.
        case_key: key of patient ids in the targets dict (bootstrap and ``n_patients`` unit).
        prefix: prefix of every returned key (e.g. ``"val_"``).
        threshold: probability threshold of the accuracies.
        n_bootstrap: bootstrap resamples (0: no CI).
        seed: bootstrap seed.
        reliability_dir: folder of the reliability diagrams ``<prefix><factor>_reliability.png`` of the binary
            factors, written by ``compute`` (None: none).
    """

    def __init__(
        self,
        factors: FactorTable | Iterable[Mapping[str, Any]],
        target_key: str = "factors",
        case_key: str = "case",
        prefix: str = "",
        threshold: float = 0.5,
        n_bootstrap: int = 1000,
        seed: int = 0,
        reliability_dir: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.table = FactorTable(factors)
        self.target_key, self.case_key, self.prefix = target_key, case_key, prefix
        self.threshold, self.n_bootstrap, self.seed = threshold, n_bootstrap, seed
        self.reliability_dir = reliability_dir
        super().__init__(output_transform=lambda x: x, device=device, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []
        self._cases: list[str] = []

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        preds, labels = output[Keys.PRED], output[Keys.LABEL]
        values = torch.as_tensor(labels[self.target_key]).detach().float().cpu()
        if values.ndim != 2 or values.shape[1] != len(self.table):
            raise ValueError(
                f"targets '{self.target_key}' must be (batch, {len(self.table)}), got {tuple(values.shape)}."
            )
        cols, raw = [], []
        for f in self.table:
            p = preds[f.name].detach().float().reshape(-1).cpu()
            cols.append(torch.sigmoid(p) if f.is_binary else p)
            r = preds.get(f"{f.name}{UNCALIBRATED_SUFFIX}") if f.is_binary else None
            r = None if r is None else torch.sigmoid(r.detach().float().reshape(-1).cpu())
            raw.append(torch.full_like(p, torch.nan) if r is None else r)
        self._preds.append(torch.stack(cols, 1).numpy())
        self._raw.append(torch.stack(raw, 1).numpy())
        self._targets.append(values.numpy())
        cases = labels.get(self.case_key)
        if cases is None:
            cases = [f"s{len(self._cases) + i}" for i in range(values.shape[0])]
        self._cases.extend(str(c) for c in cases)

    def details(self, name: str) -> dict[str, np.ndarray]:
        k = len(self.table)
        preds = np.concatenate(self._preds).astype(float) if self._preds else np.zeros((0, k))
        targets = np.concatenate(self._targets).astype(float) if self._targets else np.zeros((0, k))
        p, out = self.prefix, {}
        for j, f in enumerate(self.table):
            y, yhat = targets[:, j], preds[:, j]
            known = np.isfinite(y)
            out[f"{p}{f.name}_label"] = y
            if f.is_binary:
                out[f"{p}{f.name}_prob"] = yhat
                right = ((yhat >= self.threshold) == (y > 0.5)).astype(float)
                out[f"{p}{f.name}_accuracy"] = np.where(known, right, np.nan)
            else:
                out[f"{p}{f.name}_pred"] = yhat
                out[f"{p}{f.name}_mae"] = np.abs(yhat - y)
        return out

    def compute(self) -> dict[str, float]:
        k = len(self.table)
        preds = np.concatenate(self._preds) if self._preds else np.zeros((0, k))
        targets = np.concatenate(self._targets) if self._targets else np.zeros((0, k))
        raw = np.concatenate(self._raw) if self._raw else np.zeros((0, k))
        cases = np.asarray(self._cases)
        p = self.prefix
        out: dict[str, float] = {f"{p}n_images": int(len(targets)), f"{p}n_patients": int(len(set(self._cases)))}
        scores = []
        for j, f in enumerate(self.table):
            known = np.isfinite(targets[:, j])
            y, yhat, ids = targets[known, j], preds[known, j], cases[known]
            out[f"{p}{f.name}_n"] = int(known.sum())
            if f.is_binary:
                auc = roc_auc(yhat, y)
                out[f"{p}{f.name}_auc"] = auc
                out[f"{p}{f.name}_accuracy"] = (
                    float(np.mean((yhat >= self.threshold) == (y > 0.5))) if len(y) else float("nan")
                )
                out[f"{p}{f.name}_balanced_accuracy"] = balanced_accuracy(yhat >= self.threshold, y > 0.5)
                out.update(calibration_scores(yhat, y, f"{p}{f.name}"))
                curves = {"model output": (yhat, y)}
                if len(raw) and not np.isnan(raw[:, j]).all():
                    out.update(calibration_scores(raw[known, j], y, f"{p}{f.name}", UNCALIBRATED_SUFFIX))
                    curves = {"calibrated": (yhat, y), "uncalibrated": (raw[known, j], y)}
                if self.reliability_dir is not None:
                    draw_reliability_diagram(
                        os.path.join(self.reliability_dir, f"{p}{f.name}_reliability.png"), curves,
                        title=f"{p}{f.name}: reliability ({len(y)} images)",
                    )
                metric, key, score = roc_auc, "auc", auc
            else:
                err = mae(yhat, y)
                out[f"{p}{f.name}_mae"], out[f"{p}{f.name}_rmse"] = err, rmse(yhat, y)
                metric, key, score = mae, "mae", 1.0 - err / f.scale
            if self.n_bootstrap:
                if len(y) and (not f.is_binary or len(np.unique(y)) > 1):
                    low, high = case_bootstrap_ci(metric, yhat, y, ids, self.n_bootstrap, seed=self.seed)
                else:
                    low, high = float("nan"), float("nan")
                out[f"{p}{f.name}_{key}_ci_low"], out[f"{p}{f.name}_{key}_ci_high"] = low, high
            if np.isfinite(score):
                scores.append(score)
        out[f"{p}score"] = float(np.mean(scores)) if scores else 0.0
        return out
