"""Reconstruction losses for masked image modelling."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedMSELoss"]


class MaskedMSELoss(nn.Module):
    """Mean squared error over the masked pixels only (SimMIM computes its loss on masked patches).

    ``forward(pred, target, mask)`` with ``pred``/``target`` of shape ``(B, C, H, W)`` and ``mask`` of shape
    ``(B, 1, H, W)`` (1 = masked, the pixels to reconstruct). Without a mask every pixel counts.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} must equal target shape {tuple(target.shape)}.")
        err = (pred - target) ** 2
        if mask is None:
            return err.mean()
        w = mask.to(err.dtype).expand_as(err)
        return (err * w).sum() / w.sum().clamp_min(1.0)
