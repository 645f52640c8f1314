"""The per-case table every prediction writer ends with: ``predictions.csv``."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["write_prediction_csv"]


def write_prediction_csv(output_dir: str, rows: Sequence[Mapping[str, Any]], filename: str = "predictions.csv") -> str:
    """Write ``rows`` (one dict per case, the first row's keys as columns) to ``output_dir/filename``; return the path.

    An empty run still writes a header (``case``), so a downstream reader never finds the file missing.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, filename)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    return path
