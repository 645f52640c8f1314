"""U-Net with a segmentation decoder and a classification head on pooled encoder features (2-D, 2.5-D or 3-D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from .backbones import backbone_unet
from .multitask import MultiTaskNet

__all__ = ["UNetEncoder", "UNetSegClassifier"]


class UNetEncoder(nn.Module):
    """Contracting path of a U-Net (MONAI ``BasicUNet`` blocks); returns the feature maps of every level.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        features: channels per level, finest first (at least 2 levels).
        act, norm, bias, dropout: as in MONAI's ``BasicUNet``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = [int(f) for f in features]
        self.stem = TwoConv(spatial_dims, in_channels, self.features[0], act, norm, bias, dropout)
        self.downs = nn.ModuleList(
            Down(spatial_dims, self.features[i], self.features[i + 1], act, norm, bias, dropout)
            for i in range(len(self.features) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        return skips


class _SegDecoder(nn.Module):
    """Expanding path: up-sampling, concatenation with the encoder skip, two convolutions; 1x1 output layer."""

    def __init__(
        self,
        spatial_dims: int,
        features: Sequence[int],
        out_channels: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        f = list(features)
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, f[i + 1], f[i], f[i], act, norm, bias, dropout, halves=i > 0)
            for i in reversed(range(len(f) - 1))
        )
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.out = conv(f[0], out_channels, kernel_size=1)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        n = len(skips)
        for i, up in enumerate(self.ups):
            x = up(x, skips[n - 2 - i])
        return self.out(x)


class _PooledClassifier(nn.Module):
    """Global average and max pooling of the deepest encoder features, concatenated, then dropout and a small MLP.

    Takes the encoder's list of feature maps (like the decoder) and uses the last one.
    """

    def __init__(self, spatial_dims: int, in_features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.max = nn.AdaptiveMaxPool2d(1) if spatial_dims == 2 else nn.AdaptiveMaxPool3d(1)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        pooled = torch.cat((self.avg(x).flatten(1), self.max(x).flatten(1)), dim=1)
        return self.mlp(pooled)


class UNetSegClassifier(MultiTaskNet):
    """Encoder-decoder for segmentation plus a classification head on the pooled deepest encoder features.

    Outputs ``{seg_task: (B, seg_channels, *spatial) logits, cls_task: (B, num_classes) logits}``.

    With ``spatial_dims=2`` and ``slices > 1`` the network is 2.5-D: the input is a 3-D block
    ``(B, C, H, W, slices)`` of neighbouring axial slices whose slice axis is folded into the channels of a 2-D
    U-Net, and the decoder predicts every slice of the block, returned as ``(B, seg_channels, H, W, slices)``.
    This is the input and output shape of a 3-D network, so MONAI's sliding-window inference stitches and
    averages overlapping blocks along the slice axis unchanged. Use it where slices are thick or their spacing
    unknown (in-plane 3-D kernels would mix unrelated scales), and where 2-D convolutions learn more per CPU-minute.

    Args:
        in_channels: image channels (MR modalities).
        seg_channels: segmentation output channels (one per region for sigmoid outputs).
        num_classes: classification logits (1 for a binary task).
        spatial_dims: 2 (2-D or 2.5-D) or 3.
        slices: slices per 2.5-D block (``spatial_dims=2`` only); 1 means plain 2-D input ``(B, C, H, W)``.
        features: channels per U-Net level, finest first; the input size must be divisible by
            ``2 ** (len(features) - 1)``.
        cls_hidden: hidden units of the classification MLP.
        cls_dropout: dropout before each layer of the classification MLP.
        dropout: dropout in the U-Net blocks.
        seg_task, cls_task: output keys (task names).
        act, norm, bias: as in MONAI's ``BasicUNet``.
        backbone: None for the U-Net encoder of ``features``, or a pretrainable encoder (2-D only): a torchvision
            ResNet (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, torchvision's key names) or a MONAI
            FlexibleUNet backbone (``"efficientnet-b0"``, ...), with FlexibleUNet's decoder (``decoder_channels``);
            the input size must then be divisible by 32 and ``features``, ``act``, ``norm``, ``bias`` and
            ``dropout`` are not used (see :func:`~common.networks.backbone_unet`).
        decoder_channels: channels of the backbone decoder's five levels, coarsest first.
    """

    def __init__(
        self,
        in_channels: int,
        seg_channels: int,
        num_classes: int = 1,
        spatial_dims: int = 2,
        slices: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        cls_hidden: int = 64,
        cls_dropout: float = 0.3,
        dropout: float = 0.0,
        seg_task: str = "seg",
        cls_task: str = "cls",
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        backbone: Optional[str] = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if slices < 1 or (spatial_dims == 3 and slices != 1):
            raise ValueError(f"slices must be >= 1, and 1 when spatial_dims=3; got slices={slices}.")
        for name, value in (("in_channels", in_channels), ("seg_channels", seg_channels), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if len(features) < 2:
            raise ValueError(f"features must list at least 2 levels, got {list(features)}.")
        if seg_task == cls_task:
            raise ValueError(f"seg_task and cls_task must differ, both are '{seg_task}'.")
        if backbone and spatial_dims != 2:
            raise ValueError(f"backbone needs spatial_dims=2, got {spatial_dims}.")
        encoder: nn.Module
        if backbone:
            encoder, decoder, deepest = backbone_unet(backbone, in_channels * slices, seg_channels * slices,
                                                      decoder_channels)
            levels = 6  # five stride-2 stages
        else:
            encoder = UNetEncoder(spatial_dims, in_channels * slices, features, act, norm, bias, dropout)
            decoder = _SegDecoder(spatial_dims, features, seg_channels * slices, act, norm, bias, dropout)
            deepest, levels = int(features[-1]), len(features)
        heads = {
            seg_task: decoder,
            cls_task: _PooledClassifier(spatial_dims, deepest, cls_hidden, num_classes, cls_dropout),
        }
        super().__init__(encoder, heads)
        self.spatial_dims, self.slices = spatial_dims, slices
        self.seg_channels = seg_channels
        self.seg_task, self.cls_task = seg_task, cls_task
        self.size_divisor = 2 ** (levels - 1)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, segment: bool = True, classify: bool = True
    ) -> dict[str, torch.Tensor]:
        """Run the encoder and the requested heads (``segment``/``classify`` False skips a head, e.g. in
        single-task training); a skipped head's output is an empty tensor."""
        b = x.shape[0]
        if self.slices > 1:
            if x.dim() != 5 or x.shape[-1] != self.slices:
                raise ValueError(f"2.5-D input must be (B, C, H, W, {self.slices}), got {list(x.shape)}.")
            h, w = x.shape[2], x.shape[3]
            x = x.permute(0, 1, 4, 2, 3).reshape(b, -1, h, w)
        skips = self.encoder(x)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():  # iterating the ModuleDict keeps TorchScript happy
            if (name == self.seg_task and segment) or (name == self.cls_task and classify):
                out[name] = head(skips)
            else:
                out[name] = x.new_zeros(0)
        seg = out[self.seg_task]
        if self.slices > 1 and seg.numel() > 0:
            out[self.seg_task] = seg.reshape(b, self.seg_channels, self.slices, seg.shape[-2], seg.shape[-1]).permute(
                0, 1, 3, 4, 2
            )
        return out
