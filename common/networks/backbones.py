"""Encoders with the layout and key names of common pretrained checkpoints, for networks that start from ImageNet
(or other) weights: torchvision's ResNets (as MONAI ResNets) and MONAI's FlexibleUNet backbones (EfficientNet with
the key names of ``efficientnet-pytorch``), plus a U-Net decoder on their multi-scale features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import FlexibleUNet, ResNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from .vit_mim import ViTEncoder

__all__ = ["TORCHVISION_RESNETS", "VIT_BACKBONES", "BackboneSegDecoder", "PooledViTEncoder", "ResNetFeatureMaps",
           "backbone_names", "backbone_unet", "image_encoder", "torchvision_resnet"]

#: ResNets with torchvision's layout and key names (7x7 stride-2 stem, max pooling, 1x1 convolution shortcuts
#: without bias): name -> (block, blocks per stage). A torchvision / timm ImageNet checkpoint loads into them.
TORCHVISION_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _resnet_args(name: str, in_channels: int, spatial_dims: int) -> dict:
    if name not in TORCHVISION_RESNETS:
        raise ValueError(f"backbone must be one of {sorted(TORCHVISION_RESNETS)}, got {name!r}.")
    block, layers = TORCHVISION_RESNETS[name]
    return dict(block=block, layers=list(layers), block_inplanes=[64, 128, 256, 512], spatial_dims=spatial_dims,
                n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                bias_downsample=False, feed_forward=False)


def torchvision_resnet(name: str, in_channels: int = 3, spatial_dims: int = 2) -> ResNet:
    """A MONAI ResNet with the layout and key names of torchvision's ``name`` (``conv1``, ``bn1``, ``layer1.0...``,
    no ``fc``), returning pooled features (``in_planes`` of them: 512 or 2048), for ImageNet weights."""
    return ResNet(**_resnet_args(name, in_channels, spatial_dims))


class ResNetFeatureMaps(ResNet):
    """:func:`torchvision_resnet` returning the feature maps of the stem and the four stages (strides 2 to 32),
    finest first, as MONAI's FlexibleUNet encoders do."""

    def __init__(self, name: str, in_channels: int = 3, spatial_dims: int = 2) -> None:
        super().__init__(**_resnet_args(name, in_channels, spatial_dims))
        widths = [64, 128, 256, 512] if TORCHVISION_RESNETS[name][0] == "basic" else [256, 512, 1024, 2048]
        self.channels = [64, *widths]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def backbone_names() -> list[str]:
    """Backbones of :func:`backbone_unet`: torchvision's ResNets and MONAI FlexibleUNet's."""
    return sorted(set(TORCHVISION_RESNETS) | set(FLEXUNET_BACKBONE.register_dict))


class BackboneSegDecoder(nn.Module):
    """MONAI FlexibleUNet's decoder and segmentation head on a list of encoder feature maps."""

    def __init__(self, unet: FlexibleUNet) -> None:
        super().__init__()
        self.decoder, self.segmentation_head = unet.decoder, unet.segmentation_head
        self.skip_connect = unet.skip_connect

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features, self.skip_connect))


def backbone_unet(
    backbone: str,
    in_channels: int,
    out_channels: int,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    spatial_dims: int = 2,
) -> tuple[nn.Module, BackboneSegDecoder, int]:
    """A U-Net on a pretrainable encoder: ``(encoder, decoder, channels of the deepest feature map)``.

    ``backbone`` is a torchvision ResNet name (``resnet18``/``34``/``50``: torchvision's key names, see
    :class:`ResNetFeatureMaps`) or a MONAI FlexibleUNet backbone (e.g. ``efficientnet-b0``: the key names of
    ``efficientnet-pytorch``). The encoder returns feature maps finest first (strides 2 to 32, so inputs must be
    divisible by 32); the decoder is FlexibleUNet's, returning full-resolution logits.
    """
    if backbone not in backbone_names():
        raise ValueError(f"backbone must be one of {backbone_names()}, got {backbone!r}.")
    # the FlexibleUNet whose decoder fits the encoder's feature channels
    flex_name = {"resnet34": "resnet18"}.get(backbone, backbone)
    unet = FlexibleUNet(in_channels, out_channels, flex_name, pretrained=False,
                        decoder_channels=tuple(decoder_channels), spatial_dims=spatial_dims)
    if backbone in TORCHVISION_RESNETS:
        encoder: nn.Module = ResNetFeatureMaps(backbone, in_channels, spatial_dims)
        deepest = encoder.channels[-1]
    else:
        encoder = unet.encoder
        deepest = int(FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-1])
    return encoder, BackboneSegDecoder(unet), deepest


#: ViTs with 16-pixel patches of timm's sizes: name -> (hidden size, layers, heads); MLP 4x hidden. With
#: ``key_map="timm_vit"`` a timm / MAE checkpoint loads into them (RETFound: ``vit_large_patch16``).
VIT_BACKBONES = {
    "vit_tiny_patch16": (192, 12, 3),
    "vit_small_patch16": (384, 12, 6),
    "vit_base_patch16": (768, 12, 12),
    "vit_large_patch16": (1024, 24, 16),
}


class PooledViTEncoder(ViTEncoder):
    """:class:`~common.networks.ViTEncoder` (same key names) returning the normalised CLS token ``(B, hidden)``;
    ``in_planes`` is its size, as for the ResNet encoders."""

    def __init__(self, name: str, in_channels: int, img_size: int | Sequence[int]) -> None:
        if name not in VIT_BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(VIT_BACKBONES)}, got {name!r}.")
        hidden, layers, heads = VIT_BACKBONES[name]
        super().__init__(in_channels, img_size, 16, hidden, 4 * hidden, layers, heads)
        self.in_planes = hidden

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, token_mask)[:, 0]


def image_encoder(name: str, in_channels: int = 3, img_size: int | Sequence[int] = 224) -> nn.Module:
    """A pretrainable encoder returning pooled features ``(B, in_planes)``: a torchvision-layout ResNet
    (:data:`TORCHVISION_RESNETS`) or a ViT (:data:`VIT_BACKBONES`, ``img_size`` divisible by 16)."""
    if name in TORCHVISION_RESNETS:
        return torchvision_resnet(name, in_channels)
    if name in VIT_BACKBONES:
        return PooledViTEncoder(name, in_channels, img_size)
    raise ValueError(f"backbone must be one of {sorted(TORCHVISION_RESNETS) + sorted(VIT_BACKBONES)}, got {name!r}.")
