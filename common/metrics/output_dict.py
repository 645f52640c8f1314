"""Base of ignite metrics that read the whole multi-task engine output (``{"pred": {...}, "label": {...}}``)."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from ignite.metrics import Metric

__all__ = ["OutputDictMetric"]


class OutputDictMetric(Metric):
    """An ignite ``Metric`` whose ``update`` gets the engine output dict unchanged.

    Ignite's default expects ``(y_pred, y)``; multi-task outputs are dicts of task dicts, so subclasses pick what
    they need (a task's prediction, its labels, case ids) themselves.
    """

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list):
            raise ValueError(f"{type(self).__name__} needs a batch output dict: set decollate=False on the engine.")
        self.update(output)
