"""Calibration of predicted probabilities: expected calibration error (ECE), Brier score and reliability bins.

Binning (documented in each bundle's README): ``CALIBRATION_BINS = 10`` equal-width bins of [0, 1] (Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017; Naeini et al., AAAI 2015), bins ``[left, right)`` with the
last one closed, from :func:`monai.metrics.calibration_binning`. For a binary output the bins hold the probability of
the **positive class** and the accuracy of a bin is the fraction of positives in it; the ECE is the count-weighted
mean of ``|mean probability - fraction of positives|`` over the non-empty bins. The Brier score is the mean squared
difference of the positive-class probability and the 0/1 label.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import calibration_binning

__all__ = [
    "CALIBRATION_BINS",
    "UNCALIBRATED_SUFFIX",
    "brier_score",
    "calibration_scores",
    "expected_calibration_error",
    "reliability_bins",
]

#: Number of equal-width probability bins of the ECE and the reliability diagrams.
CALIBRATION_BINS = 10
#: Suffix of the prediction keys holding an output's logits before temperature scaling, and of the metric names
#: computed from them (``<task>_uncalibrated`` -> ``<prefix>_ece_uncalibrated``).
UNCALIBRATED_SUFFIX = "_uncalibrated"


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(labels, dtype=np.float64).reshape(-1)
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels must have the same length, got {probs.size} and {labels.size}.")
    return probs, labels


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin mean probability, fraction of positives and count of positive-class ``probs`` against 0/1 ``labels``
    (``n_bins`` equal-width bins of [0, 1]; empty bins have NaN means)."""
    probs, labels = _check(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if probs.size == 0:
        nan = np.full(n_bins, np.nan)
        return nan, nan.copy(), np.zeros(n_bins)
    p = torch.as_tensor(probs, dtype=torch.float32).reshape(1, 1, -1)
    y = torch.as_tensor(labels > 0.5, dtype=torch.float32).reshape(1, 1, -1)
    mean_p, mean_y, counts = calibration_binning(p, y, num_bins=n_bins)
    return mean_p[0, 0].double().numpy(), mean_y[0, 0].double().numpy(), counts[0, 0].double().numpy()


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE of positive-class probabilities against 0/1 labels (nan without samples); see the module docstring."""
    mean_p, mean_y, counts = reliability_bins(probs, labels, n_bins)
    if counts.sum() == 0:
        return float("nan")
    known = counts > 0
    return float(np.sum(np.abs(mean_p[known] - mean_y[known]) * counts[known]) / counts.sum())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference of positive-class probabilities and 0/1 labels (nan without samples)."""
    probs, labels = _check(probs, labels)
    return float(np.mean((probs - (labels > 0.5)) ** 2)) if probs.size else float("nan")


def calibration_scores(probs: np.ndarray, labels: np.ndarray, prefix: str, suffix: str = "") -> dict[str, float]:
    """``{<prefix>_ece<suffix>, <prefix>_brier<suffix>}`` of positive-class ``probs`` against 0/1 ``labels``
    (samples without a finite probability, e.g. images where no prediction could be made, are left out)."""
    probs, labels = _check(probs, labels)
    finite = np.isfinite(probs)
    probs, labels = probs[finite], labels[finite]
    return {
        f"{prefix}_ece{suffix}": expected_calibration_error(probs, labels),
        f"{prefix}_brier{suffix}": brier_score(probs, labels),
    }
