"""Impartial multi-task learning (IMTL), Liu et al. ICLR 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import GradientWeighting, register_weighting

__all__ = ["IMTL"]

_EPS = 1e-12


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """IMTL-L loss scaling plus IMTL-G closed-form gradient weights (the hybrid "IMTL" of the paper).

    Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards impartial multi-task learning", ICLR 2021, as in
    LibMTL. IMTL-L: each loss becomes ``exp(s_i) * L_i - s_i`` with a learnable scale ``s_i`` (init 0, an
    ``nn.Parameter`` trained by the main optimiser; its gradient ``exp(s_i) L_i - 1`` drives the scaled losses
    towards 1). IMTL-G: with the shared-parameter gradients ``g_i`` of the scaled losses and the unit gradients
    ``u_i = g_i / ||g_i||``, ``D = [g_1 - g_i]_{i>1}``, ``U = [u_1 - u_i]_{i>1}``::

        alpha_{2..T} = g_1 U^T (D U^T)^-1,   alpha_1 = 1 - sum_{i>1} alpha_i,   g = sum_i alpha_i g_i

    so that ``g . u_i`` is the same for every task. The solve is done in float64 (pseudo-inverse when
    ``D U^T`` is singular, e.g. parallel gradients). Task-specific parameters get the gradient of their own
    scaled loss ``exp(s_i) L_i`` (as in LibMTL). The returned weight of task i is ``alpha_i * exp(s_i)``, the
    factor of ``grad L_i`` in the shared gradient.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.loss_scale = nn.Parameter(torch.zeros(len(self.task_names)))

    @staticmethod
    def imtl_g_weights(grads: torch.Tensor) -> torch.Tensor:
        """Closed-form IMTL-G weights ``alpha`` (sum 1) for the ``(T, P)`` task gradients."""
        g = grads.detach().double()
        n = g.shape[0]
        if n == 1:
            return torch.ones(1, dtype=torch.float64, device=g.device)
        unit = g / g.norm(dim=1, keepdim=True).clamp_min(_EPS)
        d = g[:1] - g[1:]
        u = unit[:1] - unit[1:]
        lhs = (d @ u.T).T  # alpha^T (D U^T) = g_1 U^T  <=>  (D U^T)^T alpha = U g_1
        rhs = u @ g[0]
        try:
            alpha = torch.linalg.solve(lhs, rhs)
            if not bool(torch.isfinite(alpha).all()) or float(torch.linalg.cond(lhs)) > 1e12:
                raise RuntimeError("ill-conditioned")
        except RuntimeError:
            alpha = torch.linalg.pinv(lhs) @ rhs
        return torch.cat([(1.0 - alpha.sum()).reshape(1), alpha])

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward the scaled losses (IMTL-L), write the IMTL-G combination into the shared gradients."""
        self.check_losses(losses)
        scaled = {}
        for name, loss in losses.items():
            s = self.loss_scale[self.task_names.index(name)].to(loss.device)
            scaled[name] = torch.exp(s) * loss.reshape(()) - s
        names, grads = self.task_gradients(scaled, shared_params)
        alpha = self.imtl_g_weights(grads)
        self.set_shared_gradient((alpha.to(grads) @ grads), shared_params)
        scales = torch.exp(self.loss_scale.detach())
        return {k: float(alpha[j]) * float(scales[self.task_names.index(k)]) for j, k in enumerate(names)}
