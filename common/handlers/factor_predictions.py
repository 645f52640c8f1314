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
from .case_results import CaseResult, Measurement, PredictionWriter

__all__ = ["FactorPredictionWriter"]

logger = logging.getLogger(__name__)


class FactorPredictionWriter(PredictionWriter):
    """Writes ``<output_dir>/<filename>``: one row per image with every factor's prediction.

    Each image is handed over in ``engine.state.case_results`` (:class:`~common.handlers.case_results.CaseResult`,
    no masks): ``<factor>_probability`` (unit ``1``) for binary factors, ``<factor>`` in the factor's unit for
    continuous ones.

    Columns: ``image_id``, ``patient``, then per factor ``<factor>`` (regression, original units) or
    ``<factor>_probability`` and ``<factor>_prediction`` (binary, 0/1 at ``threshold``), and ``<factor>_true``
    when the targets hold known values (evaluation).

    Args:
        output_dir: output folder (created).
        factors: the factor table the network was built with.
        target_key: key of the ``(B, n_factors)`` values in the targets dict; None for inference without labels.
        threshold: probability threshold of binary predictions.
        filename: CSV file name.
        case_key: key of the image ids (in the targets dict and the batch).
        series_key: batch key of the DICOM source (handed over with the result).
    """

    def __init__(
        self,
        output_dir: str,
        factors: FactorTable | Iterable[Mapping[str, Any]],
        target_key: str | None = None,
        threshold: float = 0.5,
        filename: str = "predictions.csv",
        case_key: str = "image_id",
        series_key: str = "dicom_series",
    ) -> None:
        super().__init__(case_key=case_key, series_key=series_key)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.output_dir, self.table = str(output_dir), FactorTable(factors)
        self.target_key, self.threshold, self.filename = target_key, threshold, filename

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self._rows: list[dict[str, Any]] = []

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        preds, labels = output[Keys.PRED], output.get(Keys.LABEL, {}) or {}
        ids = list(labels.get(self.case_key, []))
        patients = list(labels.get("case", ids))
        values = labels.get(self.target_key) if self.target_key else None
        values = torch.as_tensor(values).float().cpu() if values is not None else None
        n = preds[self.table.names[0]].shape[0]
        sources = self.sources(engine.state.batch or {}, n)
        for i in range(n):
            row: dict[str, Any] = {"image_id": ids[i] if ids else i, "patient": patients[i] if patients else ""}
            found: dict[str, Measurement] = {}
            for k, f in enumerate(self.table):
                y = float(preds[f.name][i].reshape(-1)[0])
                if f.is_binary:
                    prob = 1.0 / (1.0 + math.exp(-y))
                    row[f"{f.name}_probability"] = round(prob, 5)
                    row[f"{f.name}_prediction"] = int(prob >= self.threshold)
                    found[f"{f.name}_probability"] = Measurement(prob, "1", f"{f.name} ({f.unit})".strip())
                else:
                    row[f.name] = round(y, 4)
                    found[f.name] = Measurement(y, f.unit or "1", f.name)
                if values is not None:
                    true = float(values[i, k])
                    row[f"{f.name}_true"] = "" if math.isnan(true) else round(true, 4)
            self._rows.append(row)
            details = {k: v for k, v in row.items() if k.endswith("_prediction") or k == "patient"}
            self.publish(engine, CaseResult(case=str(row["image_id"]), source=sources[i], measurements=found,
                                            details=details))

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        fields = list(dict.fromkeys(k for r in self._rows for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self._rows)
        logger.info(f"predictions of {len(self._rows)} images written to {path}")
