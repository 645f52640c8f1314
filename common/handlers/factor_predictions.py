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
from .fundus_predictions import NO_FUNDUS

__all__ = ["FactorPredictionWriter"]

logger = logging.getLogger(__name__)


class FactorPredictionWriter(PredictionWriter):
    """Writes ``<output_dir>/<filename>``: one row per image with every factor's prediction.

    Each image is handed over in ``engine.state.case_results`` (:class:`~common.handlers.case_results.CaseResult`,
    no masks): ``<factor>_probability`` (unit ``1``) for binary factors, ``<factor>`` in the factor's unit for
    continuous ones.

    Columns: ``image_id``, ``patient``, then per factor ``<factor>`` (regression, original units) or
    ``<factor>_probability`` and ``<factor>_prediction`` (binary, 0/1 at ``threshold``), and ``<factor>_true``
    when the targets hold known values (evaluation); ``flag`` where ``min_fundus_std`` is set.

    With ``min_fundus_std`` > 0, an image whose batch value ``stat_key`` (see
    :class:`~common.transforms.FrameContrastd`) is below it is no fundus photograph (a blank or near-uniform frame):
    its row has no values, :data:`~common.handlers.fundus_predictions.NO_FUNDUS` in ``flag`` and every
    ``_prediction`` column, and its :class:`CaseResult` carries that flag and measurements without values.

    Args:
        output_dir: output folder (created).
        factors: the factor table the network was built with.
        target_key: key of the ``(B, n_factors)`` values in the targets dict; None for inference without labels.
        threshold: probability threshold of binary predictions.
        filename: CSV file name.
        case_key: key of the image ids (in the targets dict and the batch).
        series_key: batch key of the DICOM source (handed over with the result).
        min_fundus_std: smallest ``stat_key`` value of a fundus photograph; 0 turns the test off.
        stat_key: batch key of the per-image statistic.
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
        min_fundus_std: float = 0.0,
        stat_key: str = "fundus_std",
    ) -> None:
        super().__init__(case_key=case_key, series_key=series_key)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.output_dir, self.table = str(output_dir), FactorTable(factors)
        self.target_key, self.threshold, self.filename = target_key, threshold, filename
        if min_fundus_std < 0:
            raise ValueError(f"min_fundus_std must be >= 0, got {min_fundus_std}.")
        self.min_fundus_std, self.stat_key = float(min_fundus_std), stat_key

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
        batch = engine.state.batch or {}
        sources = self.sources(batch, n)
        stats = batch.get(self.stat_key) if self.min_fundus_std > 0 else None
        if self.min_fundus_std > 0 and stats is None:
            raise KeyError(f"FactorPredictionWriter: min_fundus_std is set but the batch has no '{self.stat_key}' "
                           "(add common.transforms.FrameContrastd to the transforms and keep its key).")
        for i in range(n):
            row: dict[str, Any] = {"image_id": ids[i] if ids else i, "patient": patients[i] if patients else ""}
            found: dict[str, Measurement] = {}
            flags: list[str] = []
            if stats is not None:
                std = float(torch.as_tensor(stats).reshape(-1)[i])
                if std < self.min_fundus_std:
                    flags = [f"{NO_FUNDUS} (blank or near-uniform frame: green-channel std {std:.4f})"]
                    logger.warning(f"image '{row['image_id']}': {flags[0]}; no prediction.")
            for k, f in enumerate(self.table):
                y = float(preds[f.name][i].reshape(-1)[0])
                if flags:
                    if f.is_binary:
                        row[f"{f.name}_probability"], row[f"{f.name}_prediction"] = "", NO_FUNDUS
                        found[f"{f.name}_probability"] = Measurement(None, "1", f"{f.name} ({f.unit})".strip())
                    else:
                        row[f.name] = ""
                        found[f.name] = Measurement(None, f.unit or "1", f.name)
                elif f.is_binary:
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
            if stats is not None:
                row["flag"] = "; ".join(flags)
            self._rows.append(row)
            details = {k: v for k, v in row.items() if k.endswith("_prediction") or k == "patient"}
            self.publish(engine, CaseResult(case=str(row["image_id"]), source=sources[i], measurements=found,
                                            flags=flags, details=details))

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        fields = list(dict.fromkeys(k for r in self._rows for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self._rows)
        logger.info(f"predictions of {len(self._rows)} images written to {path}")
