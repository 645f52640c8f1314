"""Equal weighting (EW): the plain sum of the task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Weighting, register_weighting

__all__ = ["EqualWeighting"]


@register_weighting("ew")
class EqualWeighting(Weighting):
    """Backpropagate ``sum_i L_i``; every present task has weight 1.

    The usual multi-task baseline (e.g. "EW" in LibMTL, Lin et al. 2022, "Reasonable effectiveness of random
    weighting").

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
    """

    loss_scale_equivariant = True

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward ``sum(losses.values())``; return weight 1.0 for every present task."""
        self.check_losses(losses)
        torch.stack([loss.reshape(()) for loss in losses.values()]).sum().backward()
        return {name: 1.0 for name in losses}
