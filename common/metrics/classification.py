"""Ignite metrics for a binary classification task inside a multi-task output, skipping unknown labels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.metrics import compute_roc_auc
from monai.utils import CommonKeys as Keys

from .bootstrap import case_bootstrap_ci
from .calibration import UNCALIBRATED_SUFFIX, calibration_scores
from .output_dict import OutputDictMetric
from .reliability_diagram import draw_reliability_diagram

__all__ = ["BinaryTaskMetrics", "balanced_accuracy", "roc_auc"]


def roc_auc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """ROC-AUC of scores against 0/1 labels (nan if one class is absent)."""
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(y_pred), torch.as_tensor(y_true)))


def balanced_accuracy(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Mean of sensitivity and specificity of boolean predictions (nan if one class is absent)."""
    y_pred, y_true = np.asarray(y_pred, bool), np.asarray(y_true, bool)
    if y_true.all() or not y_true.any():
        return float("nan")
    return float((np.mean(y_pred[y_true]) + np.mean(~y_pred[~y_true])) / 2)


class BinaryTaskMetrics(OutputDictMetric):
    """ROC-AUC with a case-level bootstrap 95% CI, accuracy, balanced accuracy and calibration of one binary task.

    Reads ``output["pred"][task]`` (logits, ``(B,)`` or ``(B, 1)``), ``output["label"][label_key]`` and the case
    ids ``output["label"][case_key]``; samples whose label equals ``missing_value`` are skipped. ``compute``
    returns ``{prefix_auc, prefix_auc_ci_low, prefix_auc_ci_high, prefix_accuracy, prefix_balanced_accuracy,
    prefix_ece, prefix_brier, count_key}`` (balanced accuracy: mean of sensitivity and specificity, nan with one
    class absent; ECE and Brier score: :mod:`common.metrics.calibration`). When the predictions also hold the logits
    before calibration (``<task>_uncalibrated``, see :class:`common.inferers.CalibratedInferer`),
    also ``prefix_ece_uncalibrated`` and ``prefix_brier_uncalibrated``.
    :meth:`details` gives every sample's ``prefix_label`` (NaN where unknown), ``prefix_prob`` and
    ``prefix_accuracy`` (1 if right, 0 if wrong, NaN where unknown): the ROC-AUC of the labelled samples' probabilities
    is ``prefix_auc``.

    Args:
        task: key of the task's logits in the prediction dict.
        label_key: key of the labels in the targets dict.
        case_key: key of case ids in the targets dict (bootstrap unit); None resamples samples.
        prefix: prefix of the returned keys (default ``task``).
        threshold: probability threshold for accuracy.
        n_bootstrap: bootstrap resamples (0 disables the CI).
        missing_value: label value meaning "unknown".
        count_key: key of the number of labelled samples (default ``prefix_n``).
        reliability_dir: folder of the reliability diagram ``<prefix>_reliability.png`` written by ``compute``
            (None: none).
    """

    def __init__(
        self,
        task: str,
        label_key: str = Keys.LABEL,
        case_key: str | None = "case",
        prefix: str | None = None,
        threshold: float = 0.5,
        n_bootstrap: int = 1000,
        missing_value: float = -1,
        seed: int = 0,
        count_key: str | None = None,
        reliability_dir: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}.")
        self.task, self.label_key, self.case_key = task, label_key, case_key
        self.prefix = prefix or task
        self.count_key = count_key or f"{self.prefix}_n"
        self.threshold, self.n_bootstrap, self.missing_value, self.seed = threshold, n_bootstrap, missing_value, seed
        self.reliability_dir = reliability_dir
        super().__init__(output_transform=lambda x: x, device=device, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._raw_probs: list[np.ndarray] = []
        self._cases: list[Any] = []
        self._all_probs: list[np.ndarray] = []
        self._all_labels: list[np.ndarray] = []

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        logits = output[Keys.PRED][self.task].detach().float().reshape(-1).cpu()
        labels = torch.as_tensor(output[Keys.LABEL][self.label_key]).detach().float().reshape(-1).cpu()
        if logits.numel() != labels.numel():
            raise ValueError(f"task '{self.task}': {logits.numel()} predictions for {labels.numel()} labels.")
        known = (labels != self.missing_value) & torch.isfinite(labels)
        self._all_probs.append(torch.sigmoid(logits).numpy())
        self._all_labels.append(torch.where(known, labels, torch.full_like(labels, float("nan"))).numpy())
        self._probs.append(torch.sigmoid(logits)[known].numpy())
        raw = output[Keys.PRED].get(f"{self.task}{UNCALIBRATED_SUFFIX}")
        if raw is not None:
            self._raw_probs.append(torch.sigmoid(raw.detach().float().reshape(-1).cpu())[known].numpy())
        self._labels.append(labels[known].numpy())
        cases = output[Keys.LABEL].get(self.case_key) if self.case_key else None
        if cases is None:
            cases = [f"s{len(self._cases) + i}" for i in range(len(labels))]
        self._cases.extend(c for c, k in zip(list(cases), known.tolist()) if k)

    def details(self, name: str) -> dict[str, np.ndarray]:
        probs = np.concatenate(self._all_probs).astype(float) if self._all_probs else np.zeros(0)
        labels = np.concatenate(self._all_labels).astype(float) if self._all_labels else np.zeros(0)
        right = ((probs >= self.threshold) == (labels > 0.5)).astype(float)
        return {
            f"{self.prefix}_label": labels,
            f"{self.prefix}_prob": probs,
            f"{self.prefix}_accuracy": np.where(np.isfinite(labels), right, np.nan),
        }

    def compute(self) -> dict[str, float]:
        probs = np.concatenate(self._probs) if self._probs else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0)
        out = {
            f"{self.prefix}_auc": roc_auc(probs, labels),
            f"{self.prefix}_accuracy": (
                float(np.mean((probs >= self.threshold) == (labels > 0.5))) if len(labels) else float("nan")
            ),
            f"{self.prefix}_balanced_accuracy": balanced_accuracy(probs >= self.threshold, labels > 0.5),
            self.count_key: int(len(labels)),
            **calibration_scores(probs, labels, self.prefix),
        }
        curves = {"model output": (probs, labels)}
        if self._raw_probs:
            raw = np.concatenate(self._raw_probs)
            out.update(calibration_scores(raw, labels, self.prefix, UNCALIBRATED_SUFFIX))
            curves = {"calibrated": (probs, labels), "uncalibrated": (raw, labels)}
        if self.reliability_dir is not None:
            path = os.path.join(self.reliability_dir, f"{self.prefix}_reliability.png")
            draw_reliability_diagram(path, curves, title=f"{self.prefix}: reliability ({len(labels)} samples)")
        if self.n_bootstrap:
            low, high = case_bootstrap_ci(roc_auc, probs, labels, self._cases, self.n_bootstrap, seed=self.seed)
            out[f"{self.prefix}_auc_ci_low"], out[f"{self.prefix}_auc_ci_high"] = low, high
        return out
