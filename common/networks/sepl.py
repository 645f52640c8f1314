"""Self-propagative multi-task learning (SePL, Ko et al., MICCAI 2025) for risk factors from a photograph.

Image encoder -> prior heads (simple factors: age, sex, ...) -> a prior embedding with attention over the
priors -> experts shared by the complex factors, mixed by a per-factor gate over [image features; priors] ->
per-factor heads. Two baselines by the ``architecture`` argument: ``"independent"`` (one head per factor on the
shared encoder) and ``"moe"`` (the same experts and gates without the priors).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

from ..data.factors import Factor, FactorTable
from .backbones import image_encoder

__all__ = [
    "SEPL_ARCHITECTURES",
    "FactorHead",
    "GatedFactorHead",
    "PriorExpert",
    "SePLNet",
]

SEPL_ARCHITECTURES = ("sepl", "independent", "moe")


class FactorHead(nn.Module):
    """Linear (or one-hidden-layer MLP) head of one factor; returns ``(z, y)``.

    ``z`` is the raw output (a logit for binary factors, the scaled value ``(y - center) / scale`` for regression
    factors) and ``y`` the prediction (the logit, or ``center + scale * z`` in original units).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 0,
        binary: bool = False,
        center: float = 0.0,
        scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        last = nn.Linear(hidden if hidden > 0 else in_features, 1)
        nn.init.zeros_(last.bias)  # start at the table's centre (regression) or p = 0.5 (binary)
        self.net = nn.Sequential(*layers, last)
        self.binary = bool(binary)
        self.center, self.scale = float(center), float(scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net(x)
        if self.binary:
            return z, z
        return z, z * self.scale + self.center


class PriorExpert(nn.Module):
    """One expert: ``h_img = ReLU(W1 f)``; with priors ``p``: ``a = softmax(W_a p) * p``, ``h_p = ReLU(W2 a)``;
    output ``ReLU(W3 [h_img; h_p])`` (without priors ``ReLU(W3 h_img)``)."""

    def __init__(self, feat_dim: int, n_priors: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(feat_dim, hidden)
        self.attention: Optional[nn.Linear] = nn.Linear(n_priors, n_priors) if n_priors > 0 else None
        self.prior: Optional[nn.Linear] = nn.Linear(n_priors, hidden) if n_priors > 0 else None
        self.out = nn.Linear(2 * hidden if n_priors > 0 else hidden, out_dim)

    def forward(self, features: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.image(features))
        if self.attention is not None and self.prior is not None:
            a = torch.softmax(self.attention(priors), dim=1) * priors
            h = torch.cat([h, F.relu(self.prior(a))], dim=1)
        return F.relu(self.out(h))


class GatedFactorHead(nn.Module):
    """Per-factor gate ``softmax(W_g x)`` over the experts' outputs, then the factor's :class:`FactorHead`."""

    def __init__(self, gate_features: int, n_experts: int, expert_dim: int, binary: bool, center: float, scale: float):
        super().__init__()
        self.gate = nn.Linear(gate_features, n_experts)
        self.head = FactorHead(expert_dim, 0, binary, center, scale)

    def forward(self, experts: torch.Tensor, gate_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.softmax(self.gate(gate_input), dim=1)
        return self.head((g.unsqueeze(2) * experts).sum(dim=1))


def _fundus_encoder(in_channels: int, channels: Sequence[int], layers: Sequence[int]) -> nn.Module:
    """A small 2-D ResNet (MONAI basic blocks; 7x7 stride-2 stem and max pooling) returning pooled features."""
    if len(channels) != len(layers) or not channels:
        raise ValueError(
            f"encoder_channels and encoder_layers must have the same length > 0, got {channels}, {layers}."
        )
    return ResNet(
        block="basic",
        layers=list(layers),
        block_inplanes=list(channels),
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        feed_forward=False,
    )


class SePLNet(nn.Module):
    """Risk factors from one image: ``forward(x)`` returns ``{factor: (B, 1)}`` for every factor of the table,
    logits for binary factors and values in original units for regression factors.

    Args:
        factors: the factor table (``stage`` "prior" or "complex" of each factor decides its place).
        architecture: ``"sepl"`` (priors propagated to the experts and gates), ``"independent"`` (every factor its
            own head on the shared encoder: linear for priors, one hidden layer for complex factors) or ``"moe"``
            (experts and gates over the image features only). Prior heads are linear in all three.
        in_channels: image channels.
        encoder_channels: widths of the encoder's 4 (or any number of) stages; the feature size is the last.
        encoder_layers: residual blocks per stage.
        num_experts: experts shared by the complex factors.
        expert_dim: output size of an expert.
        hidden_dim: hidden size of the experts' branches and of the independent heads.
        dropout: dropout on the pooled image features (training only).
        backbone: None for the small encoder of ``encoder_channels``/``encoder_layers``, or a pretrainable encoder
            (see :func:`~common.networks.image_encoder`): ``"resnet18"``, ``"resnet34"``, ``"resnet50"``
            (torchvision's layout, for ImageNet weights) or ``"vit_base_patch16"``, ``"vit_large_patch16"``, ...
            (for timm / RETFound weights with ``pretrained_key_map`` ``"timm_vit"``).
        image_size: input size of a ViT backbone (divisible by 16); not used otherwise.
    """

    def __init__(
        self,
        factors: FactorTable | Iterable[Mapping[str, Any]],
        architecture: str = "sepl",
        in_channels: int = 3,
        encoder_channels: Sequence[int] = (24, 48, 96, 192),
        encoder_layers: Sequence[int] = (1, 1, 1, 1),
        num_experts: int = 4,
        expert_dim: int = 64,
        hidden_dim: int = 64,
        dropout: float = 0.2,
        backbone: Optional[str] = None,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if architecture not in SEPL_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {list(SEPL_ARCHITECTURES)}, got {architecture!r}.")
        if num_experts < 1 or expert_dim < 1 or hidden_dim < 1:
            raise ValueError(
                f"num_experts, expert_dim and hidden_dim must be >= 1, got {num_experts}, {expert_dim}, {hidden_dim}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        table = FactorTable(factors)
        self.architecture = architecture
        self.factor_names = table.names
        if backbone:
            self.encoder = image_encoder(backbone, in_channels, image_size)
        else:
            self.encoder = _fundus_encoder(in_channels, encoder_channels, encoder_layers)
        feat = int(self.encoder.in_planes)  # channels of the last stage
        self.dropout = nn.Dropout(dropout)

        def head(f: Factor, in_features: int, hidden: int = 0) -> FactorHead:
            return FactorHead(in_features, hidden, f.is_binary, f.center, f.scale, dropout)

        self.prior_heads = nn.ModuleDict({f.name: head(f, feat) for f in table.priors})
        n_priors = len(table.priors) if architecture == "sepl" else 0
        self.use_priors = n_priors > 0
        gated = architecture != "independent" and len(table.complex) > 0
        self.independent_heads = nn.ModuleDict(
            {} if gated else {f.name: head(f, feat, hidden_dim) for f in table.complex}
        )
        self.experts = nn.ModuleList(
            [PriorExpert(feat, n_priors, hidden_dim, expert_dim) for _ in range(num_experts)] if gated else []
        )
        self.gated_heads = nn.ModuleDict(
            {
                f.name: GatedFactorHead(feat + n_priors, num_experts, expert_dim, f.is_binary, f.center, f.scale)
                for f in table.complex
            }
            if gated
            else {}
        )
        self.gated = gated

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.encoder(x))
        out: dict[str, torch.Tensor] = {}
        priors: list[torch.Tensor] = []
        for name, prior_head in self.prior_heads.items():
            z, y = prior_head(features)
            priors.append(z)
            out[name] = y
        for name, ind_head in self.independent_heads.items():
            out[name] = ind_head(features)[1]
        if self.gated:
            p = torch.cat(priors, dim=1) if self.use_priors else features.new_zeros((features.shape[0], 0))
            experts = torch.stack([expert(features, p) for expert in self.experts], dim=1)
            gate_input = torch.cat([features, p], dim=1) if self.use_priors else features
            for name, gated_head in self.gated_heads.items():
                out[name] = gated_head(experts, gate_input)[1]
        return out

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image ``encoder`` (the part pretrained weights usually fit)."""
        return self.encoder.parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used by every factor: the encoder's and the experts'."""
        yield from self.encoder.parameters()
        yield from self.experts.parameters()
