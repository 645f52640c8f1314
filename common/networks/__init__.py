"""Multi-task networks: shared encoders with named task heads returning task-keyed dicts."""

from __future__ import annotations

from .backbones import (
    TORCHVISION_RESNETS,
    VIT_BACKBONES,
    BackboneSegDecoder,
    PooledViTEncoder,
    ResNetFeatureMaps,
    backbone_names,
    backbone_unet,
    image_encoder,
    torchvision_resnet,
)
from .masked_image_model import MaskedImageModel, random_patch_mask
from .multitask import MultiTaskNet
from .param_groups import encoder_of, encoder_param_groups
from .pretrained import (
    KEY_MAPS,
    PretrainedReport,
    load_pretrained,
    load_pretrained_weights,
    read_state_dict,
    register_key_map,
    resize_position_embeddings,
    timm_vit_to_monai,
)
from .sepl import SEPL_ARCHITECTURES, FactorHead, GatedFactorHead, PriorExpert, SePLNet
from .unet_seg_cls import UNetEncoder, UNetSegClassifier
from .vit_mim import ViTClassifierMIM, ViTEncoder, attention_rollout

__all__ = [
    "VIT_BACKBONES",
    "PooledViTEncoder",
    "image_encoder",
    "BackboneSegDecoder",
    "ResNetFeatureMaps",
    "backbone_names",
    "backbone_unet",
    "KEY_MAPS",
    "SEPL_ARCHITECTURES",
    "TORCHVISION_RESNETS",
    "FactorHead",
    "GatedFactorHead",
    "MaskedImageModel",
    "MultiTaskNet",
    "PretrainedReport",
    "PriorExpert",
    "SePLNet",
    "UNetEncoder",
    "UNetSegClassifier",
    "ViTClassifierMIM",
    "ViTEncoder",
    "attention_rollout",
    "encoder_of",
    "encoder_param_groups",
    "load_pretrained",
    "load_pretrained_weights",
    "random_patch_mask",
    "read_state_dict",
    "register_key_map",
    "resize_position_embeddings",
    "timm_vit_to_monai",
    "torchvision_resnet",
]
