"""Fast adaptive multitask optimisation (FAMO), Liu et al. NeurIPS 2023."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Weighting, register_weighting

__all__ = ["FAMO"]


@register_weighting("famo")
class FAMO(Weighting):
    """Loss weighting that balances the rates at which the task losses decrease, in O(1) backward passes.

    Liu, Liang, Li, Stone and Liu, "FAMO: fast adaptive multitask optimization", NeurIPS 2023 (official code and
    LibMTL). Logits ``xi`` (init 0) give ``z = softmax(xi)``; with the losses ``L_i`` clamped to ``>= eps``
    (they must be positive, ``log L_i`` is used) the network backpropagates::

        c = sum_i z_i / L_i,    loss = sum_i (z_i / c) * log L_i     (c detached)

    so ``grad = sum_i z_i / (c L_i) * grad L_i``; the returned weights are these ``z_i / (c L_i)`` (sum 1).
    The logits are then updated from the log-loss decrease ``delta_i = log L_i(t) - log L_i(t+1)`` with the
    gradient ``J_softmax(xi)^T delta`` and an internal Adam (lr 0.025, L2 weight decay 1e-3 as in LibMTL).

    Deviations: the interface has no post-step hook, so the logit update is done *lazily* at the start of the
    next :meth:`backward`, with the stored losses of the previous step and the current losses, i.e. on the next
    batch instead of re-evaluating the same batch after the step (the official code does a second forward).
    When tasks are missing from a batch, the softmax runs over the present tasks, and the logit update over
    the tasks present in both steps; the Adam moments and step counts are kept per task so that absent tasks'
    logits do not move (with every task present this is exactly ``torch.optim.Adam``). The Adam state, the
    logits and the previous losses are buffers, so they round-trip through ``state_dict()``.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        lr: learning rate of the logits' Adam, > 0.
        weight_decay: L2 weight decay of the logits' Adam (the paper's gamma), >= 0.
        betas: Adam betas, each in [0, 1).
        eps: lower clamp of the losses, > 0.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(task_names)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}.")
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), tuple(betas), float(eps)
        self.adam_eps = 1e-8
        n = len(self.task_names)
        self.register_buffer("logits", torch.zeros(n))
        self.register_buffer("adam_exp_avg", torch.zeros(n))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(n))
        self.register_buffer("adam_step", torch.zeros(n, dtype=torch.long))
        self.register_buffer("prev_losses", torch.full((n,), float("nan")))

    def task_weights(self) -> torch.Tensor:
        """``softmax(xi)`` over all tasks, in ``task_names`` order."""
        return torch.softmax(self.logits, dim=0)

    def _update_logits(self, idx: torch.Tensor, delta: torch.Tensor) -> None:
        """One Adam step on ``xi[idx]`` with the gradient ``J_softmax^T delta`` (softmax over ``idx``)."""
        xi = self.logits[idx]
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.weight_decay * xi
        beta1, beta2 = self.betas
        m = beta1 * self.adam_exp_avg[idx] + (1 - beta1) * grad
        v = beta2 * self.adam_exp_avg_sq[idx] + (1 - beta2) * grad * grad
        step = self.adam_step[idx] + 1
        bias1 = 1 - beta1 ** step.to(xi.dtype)
        bias2 = 1 - beta2 ** step.to(xi.dtype)
        self.logits[idx] = xi - (self.lr / bias1) * m / (v.sqrt() / bias2.sqrt() + self.adam_eps)
        self.adam_exp_avg[idx] = m
        self.adam_exp_avg_sq[idx] = v
        self.adam_step[idx] = step

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Update the logits from the last step's loss decrease, then backward the FAMO objective."""
        self.check_losses(losses)
        device = self.logits.device
        idx = torch.tensor([self.task_names.index(k) for k in losses], device=device)
        clamped = [loss.reshape(()).clamp_min(self.eps) for loss in losses.values()]
        cur = torch.stack([x.detach().to(self.logits) for x in clamped])
        with torch.no_grad():
            prev = self.prev_losses[idx]
            both = torch.isfinite(prev)
            if bool(both.any()):
                self._update_logits(idx[both], prev[both].log() - cur[both].log())
            self.prev_losses.fill_(float("nan"))
            self.prev_losses[idx] = cur
            z = torch.softmax(self.logits[idx], dim=0)
            c = (z / cur).sum()
            weights = z / (c * cur)  # factor of grad L_i in the objective's gradient
        total = sum((z[j] / c).to(x.device) * torch.log(x) for j, x in enumerate(clamped))
        total.backward()
        return {k: float(weights[j]) for j, k in enumerate(losses)}
