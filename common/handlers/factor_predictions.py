"""Per-image risk-factor predictions of an inference or evaluation run, written as one CSV."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from ..data.factors import FactorTable

__all__ = ["FactorPredictionWriter"]

logger = logging.getLogger(__name__)


class FactorPredictionWriter:
    """Writes ``<output_dir>/<filename>``: one row per image with every factor's prediction.

    Columns: ``image_id``, ``patient``, then per factor ``<factor>`` (regression, original units) or
    ``<factor>_probability`` and ``<factor>_prediction`` (binary, 0/1 at ``threshold``), and ``<factor>_true``
    when the targets hold known values (evaluation).

    Args:
        output_dir: output folder (created).
        factors: the factor table the network was built with.
        target_key: key of the ``(B, n_factors)`` values in the targets dict; None for inference without labels.
        threshold: probability threshold of binary predictions.
        filename: CSV file name.
    """

    def __init__(
        self,
        output_dir: str,
        factors: FactorTable | Iterable[Mapping[str, Any]],
        target_key: str | None = None,
        threshold: float = 0.5,
        filename: str = "predictions.csv",
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.output_dir, self.table = str(output_dir), FactorTable(factors)
        self.target_key, self.threshold, self.filename = target_key, threshold, filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self._rows: list[dict[str, Any]] = []

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        preds, labels = output[Keys.PRED], output.get(Keys.LABEL, {}) or {}
        ids = list(labels.get("image_id", []))
        patients = list(labels.get("case", ids))
        values = labels.get(self.target_key) if self.target_key else None
        values = torch.as_tensor(values).float().cpu() if values is not None else None
        n = preds[self.table.names[0]].shape[0]
        for i in range(n):
            row: dict[str, Any] = {"image_id": ids[i] if ids else i, "patient": patients[i] if patients else ""}
            for k, f in enumerate(self.table):
                y = float(preds[f.name][i].reshape(-1)[0])
                if f.is_binary:
                    prob = 1.0 / (1.0 + math.exp(-y))
                    row[f"{f.name}_probability"] = round(prob, 5)
                    row[f"{f.name}_prediction"] = int(prob >= self.threshold)
                else:
                    row[f.name] = round(y, 4)
                if values is not None:
                    true = float(values[i, k])
                    row[f"{f.name}_true"] = "" if math.isnan(true) else round(true, 4)
            self._rows.append(row)

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        fields = list(dict.fromkeys(k for r in self._rows for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self._rows)
        logger.info(f"predictions of {len(self._rows)} images written to {path}")
