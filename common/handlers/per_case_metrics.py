"""Writes what every evaluated case (image, slice, volume) scored: ``per_case.csv``, and ``engine.state``'s
``per_case_metrics`` for other handlers.

The metrics (:class:`~common.metrics.OutputDictMetric` subclasses) put their per-sample values in
``engine.state.metric_details`` on completion, as MONAI's metric handlers do with ``save_details=True``; this handler
records each sample's ids as the batches go by and joins the two, one row per sample, so a paired comparison of two
models evaluated on the same cases (``benchmarks.quality --paired``) can line their rows up.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

__all__ = ["PER_CASE_FILE", "PerCaseMetricsWriter"]

logger = logging.getLogger(__name__)

#: Default file name of the per-case metrics.
PER_CASE_FILE = "per_case.csv"


def _as_list(value: Any, n: int | None = None) -> list:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    elif isinstance(value, (str, int, float)):
        value = [value] * (n or 1)
    return list(value)


class PerCaseMetricsWriter:
    """On completion, joins the metrics' per-sample values (``engine.state.metric_details``) with each sample's ids
    into one row per sample, sets ``engine.state.per_case_metrics`` (a list of row dicts, in evaluation order) and
    writes them to ``<output_dir>/<filename>`` (NaN as an empty cell).

    Attach it after the metrics (a workflow's handlers always are). The first id key is the case (the patient:
    the unit of a case-level bootstrap); further keys tell a case's samples apart (e.g. the slice index).

    Args:
        output_dir: folder of the file (created).
        filename: file name.
        metric_names: names of the metrics whose per-sample values are written, in column order (default: every
            metric that has them).
        id_keys: keys of the sample ids in the engine output's targets dict (``output["label"]``), first the case.
        columns: per-sample columns to write (default: all of the named metrics').
    """

    def __init__(
        self,
        output_dir: str,
        filename: str = PER_CASE_FILE,
        metric_names: Sequence[str] | None = None,
        id_keys: Sequence[str] = ("case",),
        columns: Sequence[str] | None = None,
    ) -> None:
        if not id_keys:
            raise ValueError("id_keys must name at least the case key.")
        self.output_dir, self.filename = str(output_dir), filename
        self.metric_names = list(metric_names) if metric_names is not None else None
        self.id_keys = list(id_keys)
        self.columns = list(columns) if columns is not None else None
        self._ids: dict[str, list] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_ids)
        engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._ids = {k: [] for k in self.id_keys}

    def _record_ids(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list):
            raise ValueError(f"{type(self).__name__} needs a batch output dict: set decollate=False on the engine.")
        targets = output[Keys.LABEL]
        missing = [k for k in self.id_keys if k not in targets]
        if missing:
            raise ValueError(f"id_keys {missing} are not in the batch targets; they hold {sorted(targets)}.")
        first = _as_list(targets[self.id_keys[0]])
        self._ids[self.id_keys[0]] += first
        for k in self.id_keys[1:]:
            self._ids[k] += _as_list(targets[k], len(first))

    def rows(self, engine: Engine) -> list[dict[str, Any]]:
        """The per-sample rows of the finished run.

        Raises:
            ValueError: a named metric has no per-sample values, two metrics (or a metric and an id) share a column
                name, a named column is unknown, or a metric saw a different number of samples than the handler.
        """
        details = getattr(engine.state, "metric_details", None) or {}
        names = self.metric_names if self.metric_names is not None else list(details)
        unknown = [n for n in names if n not in details]
        if unknown:
            raise ValueError(f"metric_names {unknown} have no per-sample values; those that have: {sorted(details)}.")
        values: dict[str, np.ndarray] = {}
        for n in names:
            for column, v in details[n].items():
                if column in values or column in self.id_keys:
                    raise ValueError(f"per-sample column '{column}' of metric '{n}' is written by another metric too.")
                values[column] = np.asarray(v, dtype=float).reshape(-1)
        if self.columns is not None:
            missing = [c for c in self.columns if c not in values]
            if missing:
                raise ValueError(f"columns {missing} are not per-sample values of {names}; they have {list(values)}.")
            values = {c: values[c] for c in self.columns}
        n_samples = len(self._ids[self.id_keys[0]])
        wrong = {c: len(v) for c, v in values.items() if len(v) != n_samples}
        if wrong:
            raise ValueError(f"{n_samples} samples were evaluated but per-sample columns have lengths {wrong}.")
        rows = []
        for i in range(n_samples):
            row: dict[str, Any] = {k: self._ids[k][i] for k in self.id_keys}
            row.update({c: float(v[i]) for c, v in values.items()})
            rows.append(row)
        return rows

    def __call__(self, engine: Engine) -> None:
        rows = self.rows(engine)
        engine.state.per_case_metrics = rows
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        fields = list(rows[0]) if rows else list(self.id_keys)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                )
        logger.info(f"per-case metrics of {len(rows)} samples written to {path}")
