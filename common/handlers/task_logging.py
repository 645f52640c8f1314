"""Logging of every task's loss and weight: iteration scalars and epoch averages for console/TensorBoard/MLflow."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["task_scalars", "TaskEpochSummary", "TaskProgressBar"]


def task_scalars(output: dict[str, Any] | list) -> dict[str, float]:
    """Flat ``{"loss": total, "loss_<task>": ..., "weight_<task>": ...}`` from a multi-task trainer output.

    Use as ``output_transform`` of MONAI's ``StatsHandler`` / ``TensorBoardStatsHandler`` / ``MLFlowHandler``.
    """
    if isinstance(output, list):  # decollated output: every item carries the same scalars
        output = output[0]
    out = {"loss": float(output["loss"])}
    out.update({f"loss_{k}": float(v) for k, v in output.get("task_losses", {}).items()})
    out.update({f"weight_{k}": float(v) for k, v in output.get("task_weights", {}).items()})
    return out


class TaskEpochSummary:
    """Puts each task's epoch-average loss and weight into ``engine.state.metrics``.

    Keys ``train_loss_<task>`` and ``train_weight_<task>``; epoch-level StatsHandler, TensorBoardStatsHandler and
    MLFlowHandler log ``engine.state.metrics``, so every task's curve appears in all three.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Engine) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def _update(self, engine: Engine) -> None:
        if not hasattr(self, "_sums"):
            self._reset(engine)
        out = engine.state.output
        if isinstance(out, list):
            out = out[0]
        for kind in ("task_losses", "task_weights"):
            for task, value in out.get(kind, {}).items():
                key = f"train_{'loss' if kind == 'task_losses' else 'weight'}_{task}"
                self._sums[key] += float(value)
                self._counts[key] += 1

    def _complete(self, engine: Engine) -> None:
        for key, total in getattr(self, "_sums", {}).items():
            engine.state.metrics[key] = total / max(self._counts[key], 1)


class TaskProgressBar(ProgressBar):
    """Console progress bar (tqdm) of an epoch showing the total loss and every task's loss and weight."""

    def attach(self, engine: Engine, metric_names=None, output_transform=task_scalars, **kwargs: Any) -> None:  # type: ignore[override]
        super().attach(engine, metric_names=metric_names, output_transform=output_transform, **kwargs)
