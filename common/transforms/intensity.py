"""Intensity normalisation of image tensors."""

from __future__ import annotations

import torch

__all__ = ["standardize_channels"]


def standardize_channels(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit variance per image and channel over the spatial dims (``(B, C, H, W)``)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)
