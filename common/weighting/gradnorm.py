"""GradNorm, Chen et al. 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import GradientWeighting, register_weighting

__all__ = ["GradNorm"]

_MIN_WEIGHT = 1e-3
_EPS = 1e-12


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """Task weights that balance the gradient norms of the shared parameters.

    Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: gradient normalization for adaptive loss balancing in
    deep multitask networks", ICML 2018. With weights ``w_i`` (init 1, sum ``T``), per-task gradients
    ``g_i = grad_W L_i`` of the shared parameters and the initial losses ``L_i(0)``::

        G_i = w_i * ||g_i||,   G_bar = mean_i G_i,
        r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)),
        L_grad = sum_i | G_i - G_bar * r_i^alpha |          (target G_bar * r_i^alpha held constant)

    Each :meth:`backward` (1) backpropagates the weighted loss ``sum_i w_i L_i`` for the network with the
    current weights (task heads thus get ``w_i * grad L_i``), then (2) updates the weights with their own rule,
    one plain gradient step ``w_i <- w_i - lr * sign(G_i - target_i) * ||g_i||`` on ``L_grad``, clamps them to
    at least 1e-3 and rescales the present tasks' weights so that their sum is unchanged (all weights keep
    summing to ``T``). The weights are therefore a buffer, not parameters of the main optimiser.

    Deviations: ``W`` is all of ``shared_params`` (the paper uses the last shared layer to save compute);
    ``L_i(0)`` is task i's loss at the first batch where it is present (stored in a buffer); with a task
    missing from a batch, the means run over the present tasks only.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        alpha: restoring-force strength, >= 0 (paper: 1.5; 0 equalises the gradient norms).
        lr: step size of the weights' own gradient step, > 0 (default 0.025).
    """

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(task_names)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        self.alpha = float(alpha)
        self.lr = float(lr)
        n = len(self.task_names)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("initial_losses", torch.full((n,), float("nan")))

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward ``sum_i w_i L_i``, then update the weights; return the weights used for this batch."""
        self.check_losses(losses)
        idx = torch.tensor([self.task_names.index(k) for k in losses], device=self.weights.device)
        w = self.weights[idx].clone()
        values = torch.stack([loss.detach().reshape(()).to(w) for loss in losses.values()])
        unset = torch.isnan(self.initial_losses[idx])
        self.initial_losses[idx] = torch.where(unset, values, self.initial_losses[idx])

        weighted = {k: float(w[j]) * loss for j, (k, loss) in enumerate(losses.items())}
        _, grads = self.task_gradients(weighted, shared_params)  # rows are w_i * g_i
        self.set_shared_gradient(grads.sum(0), shared_params)

        with torch.no_grad():
            g_norm = grads.norm(dim=1).to(w) / w  # ||g_i||
            big_g = w * g_norm
            rel = values / self.initial_losses[idx].clamp_min(_EPS)
            r = rel / rel.mean().clamp_min(_EPS)
            target = big_g.mean() * r.pow(self.alpha)
            new_w = (w - self.lr * torch.sign(big_g - target) * g_norm).clamp_min(_MIN_WEIGHT)
            self.weights[idx] = new_w * (w.sum() / new_w.sum())
        return {k: float(w[j]) for j, k in enumerate(losses)}
