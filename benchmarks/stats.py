"""Summaries over seeds (mean with a 95% confidence interval by Student's t, per group of benchmark rows) and paired
comparisons of two models on the same cases (case-level bootstrap CI of the difference, Wilcoxon signed-rank test)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its ``level`` confidence interval by Student's t (NaNs dropped).

    One value gives an interval of NaNs (no spread to estimate); none gives NaNs throughout.

    Raises:
        ValueError: ``level`` is not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    v = [float(x) for x in values if x not in (None, "") and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * sd / math.sqrt(len(v))
    return m, m - half, m + half


def summarise(records: Sequence[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group ``records`` by the ``by`` keys and give, per metric, ``<metric>`` (mean), ``<metric>_ci_low``,
    ``<metric>_ci_high`` and ``n_runs``; groups keep their first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    rows = []
    for key, members in groups.items():
        row = dict(zip(by, key))
        row["n_runs"] = len(members)
        for m in metrics:
            mean, lo, hi = mean_ci([r.get(m) for r in members])
            row.update({m: mean, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append(row)
    return rows


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of ``scores`` against 0/1 ``labels`` by the Mann-Whitney rank sum (ties count one half); NaN with
    one class absent."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels) > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _groups(cases: Sequence | None, n: int) -> list[np.ndarray]:
    """Row indices of each case (first-seen order); every row its own case without ``cases``."""
    if cases is None:
        return [np.array([i]) for i in range(n)]
    if len(cases) != n:
        raise ValueError(f"cases ({len(cases)}) must give one case per value ({n}).")
    index: dict = {}
    for i, c in enumerate(cases):
        index.setdefault(c, []).append(i)
    return [np.asarray(v) for v in index.values()]


def _wilcoxon(per_case: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-case differences (1 when every difference is 0)."""
    per_case = per_case[np.isfinite(per_case)]
    if len(per_case) == 0:
        return math.nan
    if not np.any(per_case != 0):
        return 1.0
    return float(stats.wilcoxon(per_case).pvalue)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    cases: Sequence | None = None,
    labels: Sequence[float] | None = None,
    n_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Difference ``a - b`` of two models' metric on the same samples, with a paired case-level bootstrap CI and a
    Wilcoxon signed-rank p-value.

    Without ``labels``, ``a`` and ``b`` are per-sample metric values (Dice, absolute errors, 0/1 right answers) and
    the difference is the mean of ``a - b`` over the samples where both are finite. With ``labels`` (0/1, NaN where
    unknown), ``a`` and ``b`` are predicted probabilities and the difference is ``AUC(a) - AUC(b)``, both recomputed
    on every resample. The bootstrap resamples whole cases (all samples of a patient together, e.g. its slices or
    its results under several seeds). The Wilcoxon test runs on the per-case mean differences: of the values, or
    with ``labels`` of the absolute errors ``|label - probability|`` (the AUC itself has no per-case value).

    Args:
        a: the first model's per-sample values (the multi-task model).
        b: the second model's values on the same samples, in the same order.
        cases: case (patient) id of each sample, the bootstrap unit; None: each sample is a case.
        labels: 0/1 labels for an AUC difference; None: a mean difference.
        n_bootstrap: bootstrap resamples.
        level: confidence level of the interval.
        seed: bootstrap seed.

    Returns:
        ``{"difference", "ci_low", "ci_high", "p_value", "a", "b", "n_cases", "n_samples"}`` (``a``/``b``: each
        model's metric); NaNs where nothing is defined.

    Raises:
        ValueError: mismatched lengths, ``n_bootstrap < 1`` or ``level`` not in (0, 1).
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of one length, got shapes {a.shape} and {b.shape}.")
    y = None if labels is None else np.asarray(labels, dtype=float)
    if y is not None and y.shape != a.shape:
        raise ValueError(f"labels must have a's length {len(a)}, got {y.shape}.")
    keep = np.isfinite(a) & np.isfinite(b) & (np.isfinite(y) if y is not None else True)
    ids = None if cases is None else [c for c, k in zip(cases, keep) if k]
    if cases is not None and len(cases) != len(a):
        raise ValueError(f"cases ({len(cases)}) must give one case per value ({len(a)}).")
    a, b = a[keep], b[keep]
    y = y[keep] if y is not None else None
    groups = _groups(ids, len(a))
    nan = math.nan
    out = {"difference": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "a": nan, "b": nan,
           "n_cases": len(groups), "n_samples": int(len(a))}  # fmt: skip
    if not len(a):
        return out

    def estimate(idx: np.ndarray) -> tuple[float, float]:
        if y is None:
            return float(a[idx].mean()), float(b[idx].mean())
        return rank_auc(a[idx], y[idx]), rank_auc(b[idx], y[idx])

    ma, mb = estimate(np.arange(len(a)))
    out.update(a=ma, b=mb, difference=ma - mb)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_bootstrap):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        da, db = estimate(idx)
        if math.isfinite(da) and math.isfinite(db):
            diffs.append(da - db)
    if diffs:
        out["ci_low"] = float(np.quantile(diffs, (1 - level) / 2))
        out["ci_high"] = float(np.quantile(diffs, (1 + level) / 2))
    per_sample = a - b if y is None else np.abs(y - a) - np.abs(y - b)
    out["p_value"] = _wilcoxon(np.array([per_sample[g].mean() for g in groups]))
    return out


def verdict(difference: float, ci_low: float, ci_high: float, higher_is_better: bool = True) -> str:
    """``"MTL better"``, ``"MTL worse"`` (the CI of the difference MTL minus single-task excludes 0) or ``"no
    detectable difference"``, followed by ``", by X [lo, hi]"``."""
    by = f"by {difference:+.3f} [{ci_low:+.3f}, {ci_high:+.3f}]"
    if not all(math.isfinite(v) for v in (difference, ci_low, ci_high)):
        return f"not enough data ({by})" if math.isfinite(difference) else "not enough data"
    if ci_low > 0 or ci_high < 0:
        better = (ci_low > 0) == higher_is_better
        return f"MTL {'better' if better else 'worse'}, {by}"
    return f"no detectable difference, {by}"
