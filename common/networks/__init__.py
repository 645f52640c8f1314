"""Multi-task networks: shared encoders with named task heads returning task-keyed dicts."""

from __future__ import annotations

from .multitask import MultiTaskNet
from .sepl import SEPL_ARCHITECTURES, FactorHead, GatedFactorHead, PriorExpert, SePLNet
from .unet_seg_cls import UNetEncoder, UNetSegClassifier
from .vit_mim import ViTClassifierMIM, ViTEncoder, attention_rollout

__all__ = [
    "SEPL_ARCHITECTURES",
    "FactorHead",
    "GatedFactorHead",
    "MultiTaskNet",
    "PriorExpert",
    "SePLNet",
    "UNetEncoder",
    "UNetSegClassifier",
    "ViTClassifierMIM",
    "ViTEncoder",
    "attention_rollout",
]
