"""Dynamic weight average (DWA), Liu et al. 2019."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Weighting, register_weighting

__all__ = ["DynamicWeightAverage"]


@register_weighting("dwa")
class DynamicWeightAverage(Weighting):
    """Weights from the rate of change of each task's epoch-average loss.

    Liu, Johns and Davison, "End-to-end multi-task learning with attention", CVPR 2019::

        r_i = L_i(t-1) / L_i(t-2),    w_i = T * softmax(r / tau)_i

    where ``L_i(t)`` is task i's loss averaged over the batches of epoch ``t`` in which it was present and
    ``T`` the number of tasks (all of ``task_names``; when a task is missing from a batch the present tasks
    keep their weights, which then sum to less than ``T``). All weights are 1 during the first two epochs.
    :meth:`on_epoch_end` must be called once per epoch to roll the history. A task absent from a whole
    epoch carries its previous epoch average forward (ratio 1 while no two averages are known).
    All state (running sums, counts, the two last epoch averages, the epoch counter) is held in buffers.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        tau: softmax temperature, > 0 (the paper uses 2).
    """

    def __init__(self, task_names: Sequence[str], tau: float = 2.0) -> None:
        super().__init__(task_names)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}.")
        self.tau = float(tau)
        n = len(self.task_names)
        self.register_buffer("epoch_loss_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("epoch_loss_count", torch.zeros(n, dtype=torch.float64))
        # history[0] = L(t-2), history[1] = L(t-1); NaN where unknown
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    def task_weights(self) -> torch.Tensor:
        """Current weights of all tasks in ``task_names`` order (sum ``T``)."""
        n = len(self.task_names)
        if int(self.epochs_done) < 2:
            return torch.ones(n, dtype=torch.float64, device=self.history.device)
        prev2, prev1 = self.history[0], self.history[1]
        known = torch.isfinite(prev1) & torch.isfinite(prev2) & (prev2 > 0)
        ratio = torch.where(known, prev1 / torch.where(known, prev2, torch.ones_like(prev2)), torch.ones_like(prev1))
        return n * torch.softmax(ratio / self.tau, dim=0)

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Accumulate the epoch loss averages and backward ``sum_i w_i L_i``; return the ``w_i`` used."""
        self.check_losses(losses)
        w_all = self.task_weights()
        total = 0.0
        weights = {}
        for name, loss in losses.items():
            i = self.task_names.index(name)
            self.epoch_loss_sum[i] += float(loss.detach())
            self.epoch_loss_count[i] += 1
            weights[name] = float(w_all[i])
            total = total + weights[name] * loss.reshape(())
        total.backward()
        return weights

    def on_epoch_end(self) -> None:
        """Store this epoch's average losses as ``L(t-1)`` (shifting the old one to ``L(t-2)``) and reset."""
        seen = self.epoch_loss_count > 0
        avg = torch.where(seen, self.epoch_loss_sum / self.epoch_loss_count.clamp_min(1), self.history[1])
        self.history[0] = self.history[1]
        self.history[1] = avg
        self.epoch_loss_sum.zero_()
        self.epoch_loss_count.zero_()
        self.epochs_done += 1
