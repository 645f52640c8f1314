"""Reconstruction losses for masked image modelling."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedL1Loss", "MaskedMSELoss"]


class MaskedMSELoss(nn.Module):
    """Mean squared error over the masked pixels only (SimMIM computes its loss on masked patches).

    ``forward(pred, target, mask)`` with ``pred``/``target`` of shape ``(B, C, *spatial)`` (2-D or 3-D) and ``mask``
    of shape ``(B, 1, *spatial)`` (1 = masked, the pixels to reconstruct). Without a mask every pixel counts.
    """

    def _error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target) ** 2

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} must equal target shape {tuple(target.shape)}.")
        err = self._error(pred, target)
        if mask is None:
            return err.mean()
        w = mask.to(err.dtype).expand_as(err)
        return (err * w).sum() / w.sum().clamp_min(1.0)


class MaskedL1Loss(MaskedMSELoss):
    """Mean absolute error over the masked pixels only (SimMIM's loss); arguments as :class:`MaskedMSELoss`."""

    def _error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs()
