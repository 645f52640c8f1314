"""Task relatedness measured during training: inter-task affinity (one-step lookahead) and gradient cosines."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["TaskAffinity"]

logger = logging.getLogger(__name__)


class TaskAffinity:
    """Measure how tasks help or hurt each other while a :class:`~common.engines.MultiTaskTrainer` trains.

    Every ``interval`` iterations, on that iteration's batch and with the network in eval mode (no dropout):

    * **inter-task affinity** (TAG, Fifty et al., NeurIPS 2021): for each task ``i``, the shared parameters take one
      gradient step on ``L_i`` alone (``theta' = theta - lr * grad L_i``); ``Z[i][j] = 1 - L_j(theta') / L_j(theta)``
      says how much that step lowers task ``j``'s loss (positive: ``i`` helps ``j``). The step is plain SGD with
      ``lookahead_lr`` (default: the optimiser's current learning rate), a simplification of stepping the
      trainer's own optimiser;
    * **gradient cosine similarity** between the tasks' gradients on the shared parameters.

    Running means over the run are logged every epoch (rank 0) and written to ``save_dir/filename`` as
    ``{"tasks", "affinity", "gradient_cosine", "measurements", "lookahead_lr"}`` (matrices indexed
    ``[i][j]``, nan where a pair was never measured; ``lookahead_lr`` the mean step size used: with a decaying
    schedule late measurements take smaller steps and show smaller affinities), after every epoch and at the end.

    Args:
        interval: measure every ``interval`` iterations (each measurement costs one forward/backward per task and
            one extra forward per task).
        save_dir: folder of the JSON file (None: log only).
        lookahead_lr: step size of the lookahead (None: the optimiser's first parameter group's learning rate).
        filename: name of the JSON file.
    """

    def __init__(
        self, interval: int = 10, save_dir: str | None = None, lookahead_lr: float | None = None,
        filename: str = "task_affinity.json",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        if lookahead_lr is not None and not float(lookahead_lr) > 0:
            raise ValueError(f"lookahead_lr must be > 0, got {lookahead_lr}.")
        self.interval, self.save_dir, self.filename = int(interval), save_dir, filename
        self.lookahead_lr = None if lookahead_lr is None else float(lookahead_lr)
        self.tasks: list[str] = []
        self._sums: dict[str, np.ndarray] = {}
        self._counts = np.zeros((0, 0))
        self._lr_sum, self._lr_n = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.measure)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _index(self, names: list[str]) -> list[int]:
        for name in names:
            if name not in self.tasks:
                self.tasks.append(name)
        n = len(self.tasks)
        if self._counts.shape[0] < n:  # grow the matrices when a task appears (e.g. a later training phase)
            grow = lambda a: np.pad(a, ((0, n - a.shape[0]), (0, n - a.shape[1])))  # noqa: E731
            self._sums = {k: grow(v) for k, v in self._sums.items()} or {
                "affinity": np.zeros((n, n)),
                "gradient_cosine": np.zeros((n, n)),
            }
            self._counts = grow(self._counts)
        return [self.tasks.index(t) for t in names]

    def measure(self, engine: Engine) -> None:
        """One measurement on the engine's current batch (also callable directly)."""
        core = engine._core_network() if hasattr(engine, "_core_network") else engine.network
        batch = engine.prepare_batch(
            engine.state.batch, engine.state.device, engine.non_blocking, **getattr(engine, "to_kwargs", {})
        )
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        params = engine.shared_parameters() if hasattr(engine, "shared_parameters") else list(core.parameters())
        if not params:  # nothing shared is trainable (an encoder frozen for fine-tuning): no affinity to measure
            return
        active = list(getattr(engine, "active_tasks", []) or [])
        was_training = core.training
        core.eval()
        try:
            with torch.enable_grad():
                losses = engine.loss_function(core(inputs, *args, **kwargs), targets, tasks=active or None)
                names = [t for t in losses if torch.isfinite(losses[t]).all()]
                if len(names) < 2:
                    return
                grads = {}
                for t in names:
                    g = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
                    grads[t] = [torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(params, g)]
            base = {t: float(losses[t].detach()) for t in names}
            flat = {t: torch.cat([g.reshape(-1) for g in grads[t]]).double() for t in names}
            lr = self.lookahead_lr or float(engine.optimizer.param_groups[0]["lr"])
            idx = self._index(names)
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for a, ti in zip(idx, names):
                    for p, g in zip(params, grads[ti]):
                        p.sub_(lr * g)
                    look = engine.loss_function(core(inputs, *args, **kwargs), targets, tasks=names)
                    for p, original in zip(params, saved):  # exact restore (no float drift from adding back)
                        p.copy_(original)
                    for b, tj in zip(idx, names):
                        if tj in look and base[tj] > 0:
                            self._sums["affinity"][a, b] += 1.0 - float(look[tj]) / base[tj]
                            denom = flat[ti].norm() * flat[tj].norm()
                            cos = max(-1.0, min(1.0, float(flat[ti] @ flat[tj] / denom))) if denom > 0 else 0.0
                            self._sums["gradient_cosine"][a, b] += cos
                            self._counts[a, b] += 1
            self._lr_sum, self._lr_n = self._lr_sum + lr, self._lr_n + 1
        finally:
            core.train(was_training)

    def matrices(self) -> dict[str, Any]:
        """Running means so far: ``{"tasks", "affinity", "gradient_cosine", "measurements", "lookahead_lr"}``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            counts = np.maximum(self._counts, 1)
            mean = {k: np.where(self._counts > 0, v / counts, np.nan) for k, v in self._sums.items()}
        as_list = lambda m: [[None if np.isnan(x) else round(float(x), 6) for x in row] for row in m]  # noqa: E731
        return {
            "tasks": list(self.tasks),
            "affinity": as_list(mean.get("affinity", np.zeros((0, 0)))),
            "gradient_cosine": as_list(mean.get("gradient_cosine", np.zeros((0, 0)))),
            "measurements": int(self._counts.max()) if self._counts.size else 0,
            "lookahead_lr": self._lr_sum / self._lr_n if self._lr_n else float("nan"),
        }

    def _report(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or not self.tasks:
            return
        m = self.matrices()
        for i, ti in enumerate(m["tasks"]):
            row = ", ".join(
                f"{tj}: {m['affinity'][i][j]} (cos {m['gradient_cosine'][i][j]})" for j, tj in enumerate(m["tasks"])
            )
            logger.info(f"task affinity after epoch {engine.state.epoch}, step on {ti} -> {row}")
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            path = os.path.join(self.save_dir, self.filename)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(m, f, indent=2)
            os.replace(tmp, path)
