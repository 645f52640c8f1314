"""Uncertainty weighting (UW), Kendall et al. 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Weighting, register_weighting

__all__ = ["UncertaintyWeighting"]


@register_weighting("uw")
class UncertaintyWeighting(Weighting):
    """Homoscedastic-uncertainty weighting with learnable log-variances.

    Kendall, Gal and Cipolla, "Multi-task learning using uncertainty to weigh losses for scene geometry and
    semantics", CVPR 2018, in the form used by LibMTL::

        loss = sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i

    with one learnable ``s_i = log(sigma_i^2)`` per task (initialised to 0, i.e. weight 0.5). The ``s_i`` are
    ``nn.Parameter``s trained by the main optimiser (pass ``weighting.parameters()`` to it); a task absent
    from a batch contributes nothing, so its ``s_i`` gets no gradient from that batch.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))

    def task_weights(self) -> torch.Tensor:
        """Effective weights ``0.5 * exp(-s)`` of all tasks (detached), in ``task_names`` order."""
        return 0.5 * torch.exp(-self.log_vars.detach())

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward the uncertainty-weighted sum; return ``0.5 * exp(-s_i)`` of every present task."""
        self.check_losses(losses)
        total = 0.0
        weights = {}
        for name, loss in losses.items():
            s = self.log_vars[self.task_names.index(name)].to(loss.device)
            total = total + 0.5 * torch.exp(-s) * loss.reshape(()) + 0.5 * s
            weights[name] = float(0.5 * torch.exp(-s.detach()))
        total.backward()
        return weights
