"""Impartial multi-task learning (IMTL), Liu et al. ICLR 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchjd.aggregation import IMTLGWeighting

from .base import GradientWeighting, register_weighting

__all__ = ["IMTL"]

_IMTL_G = IMTLGWeighting()


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """IMTL-L loss scaling plus IMTL-G closed-form gradient weights (the hybrid "IMTL" of the paper).

    Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards impartial multi-task learning", ICLR 2021, as in
    LibMTL. IMTL-L: each loss becomes ``exp(s_i) * L_i - s_i`` with a learnable scale ``s_i`` (init 0, an
    ``nn.Parameter`` trained by the main optimiser; its gradient ``exp(s_i) L_i - 1`` drives the scaled losses
    towards 1). IMTL-G: with the shared-parameter gradients ``g_i`` of the scaled losses and the unit gradients
    ``u_i = g_i / ||g_i||``, ``D = [g_1 - g_i]_{i>1}``, ``U = [u_1 - u_i]_{i>1}``::

        alpha_{2..T} = g_1 U^T (D U^T)^-1,   alpha_1 = 1 - sum_{i>1} alpha_i,   g = sum_i alpha_i g_i

    so that ``g . u_i`` is the same for every task; the weights come from TorchJD's ``IMTLGWeighting`` on the
    Gramian (float64; pseudo-inverse, so linearly dependent gradients are handled). TorchJD alone is registered
    as ``imtl_g`` (IMTL-G) and ``imtl_l`` (IMTL-L). Task-specific parameters get the gradient of their own
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
        """IMTL-G weights ``alpha`` (sum 1) for the ``(T, P)`` task gradients: TorchJD's ``IMTLGWeighting``.

        ``alpha`` is proportional to ``pinv(G) d`` with the Gramian ``G = grads grads^T`` and the gradient norms
        ``d``, i.e. ``G alpha`` is proportional to ``d``: the same as the paper's closed form when the gradients
        are linearly independent, and defined when they are not. Computed in float64.
        """
        g = grads.detach().double()
        return _IMTL_G(g @ g.T)

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
