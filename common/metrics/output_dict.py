"""Base of ignite metrics that read the whole multi-task engine output (``{"pred": {...}, "label": {...}}``)."""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric

__all__ = ["OutputDictMetric"]


class OutputDictMetric(Metric):
    """An ignite ``Metric`` whose ``update`` gets the engine output dict unchanged.

    Ignite's default expects ``(y_pred, y)``; multi-task outputs are dicts of task dicts, so subclasses pick what
    they need (a task's prediction, its labels, case ids) themselves.

    A subclass that can say what each sample scored implements :meth:`details`; on completion those per-sample
    columns are put in ``engine.state.metric_details[name]``, as MONAI's metric handlers do with
    ``save_details=True``, for :class:`~common.handlers.PerCaseMetricsWriter` and other handlers.
    """

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list):
            raise ValueError(f"{type(self).__name__} needs a batch output dict: set decollate=False on the engine.")
        self.update(output)

    def details(self, name: str) -> dict[str, np.ndarray] | None:
        """Per-sample values, column name -> ``(n_samples,)`` array in the order the samples were seen (NaN where
        a sample has no value); None when the metric has no per-sample values.

        Args:
            name: the name the metric is attached under (for metrics whose result is one number).
        """
        return None

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        details = self.details(name)
        if details is not None:
            if not isinstance(getattr(engine.state, "metric_details", None), dict):
                engine.state.metric_details = {}
            engine.state.metric_details[name] = details
