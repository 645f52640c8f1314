"""PCGrad (projecting conflicting gradients), Yu et al. 2020."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import GradientWeighting, register_weighting

__all__ = ["PCGrad"]


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """Gradient surgery: remove the components of each task gradient that conflict with the others.

    Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient surgery for multi-task learning", NeurIPS 2020.
    For each task gradient ``g_i`` of the shared parameters and each other task ``j`` in a random order,
    if ``g_i^PC . g_j < 0``::

        g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 * g_j

    (projection onto the normal plane of the *original* ``g_j``); the shared gradient is ``sum_i g_i^PC``.
    Task-specific parameters get their own task's gradient. The returned weights are 1.0 (the method changes
    directions, not loss weights).

    The random orders come from an own ``torch.Generator`` whose state is saved in the state dict, so a resumed
    run draws the same orders.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        seed: seed of the generator; ``None`` draws one from torch's global generator (reproducible under a
            global ``torch.manual_seed``).
    """

    loss_scale_equivariant = True

    def __init__(self, task_names: Sequence[str], seed: int | None = None) -> None:
        super().__init__(task_names)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}.")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    @staticmethod
    def project(grads: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
        """Return ``sum_i g_i^PC`` for the ``(T, P)`` gradients, task ``i`` visiting ``orders[i]`` in turn."""
        out = torch.zeros_like(grads[0])
        sq_norms = (grads * grads).sum(1)
        for i in range(grads.shape[0]):
            g = grads[i].clone()
            for j in orders[i]:
                if j == i:
                    continue
                dot = torch.dot(g, grads[j])
                if dot < 0:
                    g = g - dot / sq_norms[j] * grads[j]
            out += g
        return out

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward each task, write the PCGrad combination into the shared gradients; return 1.0 per task."""
        self.check_losses(losses)
        names, grads = self.task_gradients(losses, shared_params)
        n = len(names)
        orders = [torch.randperm(n, generator=self.generator).tolist() for _ in range(n)]
        self.set_shared_gradient(self.project(grads, orders), shared_params)
        return {k: 1.0 for k in names}

    def get_extra_state(self) -> Any:
        """Save the generator state."""
        return {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the generator state."""
        self.generator.set_state(state["generator_state"])
