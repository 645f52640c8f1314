"""Bootstrap confidence intervals that resample whole cases (patients), not slices."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["case_bootstrap_ci"]


def case_bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_pred: np.ndarray,
    y_true: np.ndarray,
    cases: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of ``metric(y_pred, y_true)``, resampling cases with replacement.

    Slices of one patient are correlated, so resampling slices would give too narrow an interval; with
    ``cases=None`` each sample is its own case. Resamples where the metric is undefined (e.g. one class only
    for ROC-AUC) are drawn again; ``(nan, nan)`` if no resample is defined.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    if len(y_pred) != len(y_true):
        raise ValueError(f"y_pred ({len(y_pred)}) and y_true ({len(y_true)}) must have the same length.")
    ids = np.arange(len(y_true)) if cases is None else np.asarray(cases)
    if len(ids) != len(y_true):
        raise ValueError(f"cases ({len(ids)}) and y_true ({len(y_true)}) must have the same length.")
    if len(y_true) == 0 or len(np.unique(y_true)) < 2:  # e.g. no labelled case, or one class only: undefined
        return float("nan"), float("nan")
    uniq, inverse = np.unique(ids, return_inverse=True)
    groups = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats: list[float] = []
    tries = 0
    while len(stats) < n_bootstrap and tries < 10 * n_bootstrap:
        tries += 1
        pick = rng.integers(0, len(groups), len(groups))
        idx = np.concatenate([groups[i] for i in pick])
        if len(np.unique(y_true[idx])) < 2:
            continue
        value = metric(y_pred[idx], y_true[idx])
        if np.isfinite(value):
            stats.append(float(value))
    if not stats:
        return float("nan"), float("nan")
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))
