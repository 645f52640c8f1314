"""Summaries over seeds: mean with a 95% confidence interval (Student's t), per group of benchmark rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
