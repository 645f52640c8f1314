"""Masked image modelling (SimMIM, Xie et al. 2022) on any of the project's encoders, for self-supervised
pre-training on unlabelled images: the encoder is the bundle network's own ``encoder`` module, so its weights are
saved with the encoder's key names and ``pretrained`` (:func:`~common.networks.load_pretrained`) loads them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from monai.networks.blocks import SubpixelUpsample
from monai.networks.layers import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

from ..losses.reconstruction import MaskedL1Loss, MaskedMSELoss
from .parallel import unwrap_parallel
from .vit_mim import ViTEncoder

__all__ = ["MaskedImageModel", "random_patch_mask"]

_DUMMY_SIZE = 64  # side of the dummy input that finds a CNN encoder's stride when img_size is not given
_LOSSES = {"l1": MaskedL1Loss, "mse": MaskedMSELoss}


def random_patch_mask(
    batch: int,
    spatial_size: Sequence[int],
    mask_patch_size: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A SimMIM block mask ``(batch, 1, *spatial_size)`` (1 = masked): ``ceil(mask_ratio * n)`` of the ``n``
    blocks of side ``mask_patch_size`` of each sample, drawn at random (a size not divisible by the block side
    gets cut-off blocks at the far edges)."""
    grid = [math.ceil(int(s) / mask_patch_size) for s in spatial_size]
    n = math.prod(grid)
    k = min(n, max(1, math.ceil(n * mask_ratio)))
    order = torch.rand(batch, n, device=device, generator=generator).argsort(dim=1)
    flat = torch.zeros(batch, n, device=device)
    flat.scatter_(1, order[:, :k], 1.0)
    mask = flat.reshape(batch, 1, *grid)
    for dim in range(len(grid)):
        mask = mask.repeat_interleave(mask_patch_size, dim=dim + 2)
    return mask[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial_size))].contiguous()


class MaskedImageModel(nn.Module):
    """SimMIM-style masked image modelling around an encoder: random block mask, masked input, encoder, a light
    prediction head on the deepest feature map (a 1x1 convolution and a pixel shuffle back to the input size) and
    a loss on the masked pixels only.

    Encoders it serves (what their ``forward`` returns):

    - a feature map ``(B, C, *spatial)`` or a list/tuple of them, deepest last (U-Net skips, FlexibleUNet and
      :class:`~common.networks.ResNetFeatureMaps` stages): masked pixels are set to 0 in the input;
    - a :class:`~common.networks.ViTEncoder` (also :class:`~common.networks.PooledViTEncoder`): the masked patches'
      embeddings are replaced by the encoder's mask token, as in SimMIM; ``mask_patch_size`` must be a multiple
      of its ``patch_size``;
    - pooled features ``(B, C)`` (a MONAI ``ResNet`` with ``feed_forward=False``): the feature map is the output of
      the child module ``feature_layer``; by default the last child (in call order) returning a feature map that
      is not a pooling layer (``layer4`` of a ResNet).

    ``forward(x, mim_mask=None)`` returns ``{"mim": reconstruction (B, C, *spatial), "mim_mask": (B, 1, *spatial)}``;
    without ``mim_mask`` a random one is drawn. :meth:`loss` is the masked-pixel loss of an input.

    Args:
        encoder: the bundle network's ``encoder`` (trained in place: save ``encoder.state_dict()``).
        in_channels: channels of the encoder's input (and of the reconstruction).
        spatial_dims: 2 or 3.
        mask_ratio: fraction of blocks masked, in (0, 1).
        mask_patch_size: block side in pixels; None: the encoder's output stride (the ViT patch size).
        img_size: input size of the dummy pass that finds the deepest feature map's channels and stride (a ViT
            uses its own size); None: 64 in every dimension.
        feature_layer: name of the encoder's child module whose output is the deepest feature map, for encoders
            returning pooled features (None: chosen as above).
        loss: ``"l1"`` (SimMIM) or ``"mse"``, over the masked pixels.

    Raises:
        ValueError: naming the argument, for an encoder whose output is none of the above (e.g. pooled features of
            a module with no child returning a feature map), a deepest feature map whose stride is not the same
            integer in every dimension, or out-of-range settings.
    """

    def __init__(
        self,
        encoder: nn.Module,
        in_channels: int,
        spatial_dims: int = 2,
        mask_ratio: float = 0.6,
        mask_patch_size: Optional[int] = None,
        img_size: Sequence[int] | int | None = None,
        feature_layer: Optional[str] = None,
        loss: str = "l1",
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a torch module, got {type(encoder).__name__}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
        if str(loss).lower() not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}.")
        self.encoder = unwrap_parallel(encoder)
        self.in_channels, self.spatial_dims = int(in_channels), int(spatial_dims)
        self.mask_ratio = float(mask_ratio)
        self.vit = isinstance(self.encoder, ViTEncoder)
        if self.vit and spatial_dims != 2:
            raise ValueError(f"spatial_dims must be 2 for a ViTEncoder, got {spatial_dims}.")
        self.feature_layer: Optional[str] = feature_layer
        if self.vit:
            channels, stride = int(self.encoder.norm.normalized_shape[0]), int(self.encoder.patch_size)
            self.img_size = tuple(g * stride for g in self.encoder.grid)
        else:
            self.img_size = ensure_tuple_rep(_DUMMY_SIZE if img_size is None else img_size, spatial_dims)
            channels, stride = self._probe()
        self.stride = stride
        self.mask_patch_size = int(mask_patch_size) if mask_patch_size else stride
        if self.mask_patch_size < 1:
            raise ValueError(f"mask_patch_size must be >= 1, got {mask_patch_size}.")
        if self.vit and self.mask_patch_size % stride:
            raise ValueError(
                f"mask_patch_size ({self.mask_patch_size}) must be a multiple of the ViT encoder's patch_size "
                f"({stride})."
            )
        conv = Conv[Conv.CONV, spatial_dims](channels, self.in_channels * stride**spatial_dims, kernel_size=1)
        self.head = SubpixelUpsample(spatial_dims, channels, scale_factor=stride, conv_block=conv, apply_pad_pool=False)
        self.loss_function = _LOSSES[str(loss).lower()]()

    # --- the encoder's deepest feature map ---------------------------------------------------------------------

    def _spatial(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() == self.spatial_dims + 2

    def _choose_layer(self, dummy: torch.Tensor) -> str:
        """Name of the last child of the encoder, in call order, returning a feature map (pooling layers aside)."""
        calls: list[tuple[str, Any]] = []
        hooks = [
            child.register_forward_hook(lambda m, i, o, name=name: calls.append((name, o)))
            for name, child in self.encoder.named_children()
            if "pool" not in type(child).__name__.lower()
        ]
        try:
            self.encoder(dummy)
        finally:
            for h in hooks:
                h.remove()
        maps = [name for name, out in calls if self._spatial(out)]
        if not maps:
            raise ValueError(
                f"encoder ({type(self.encoder).__name__}) returns pooled features and none of its child modules "
                "returns a feature map: MaskedImageModel serves encoders returning a feature map, a list of them, "
                "ViTEncoder tokens, or pooled features computed from a child's feature map (set feature_layer)."
            )
        return maps[-1]

    def _deepest(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest feature map of the (CNN) encoder for input ``x``."""
        if self.feature_layer is not None:
            captured: list[torch.Tensor] = []
            layer = self.encoder.get_submodule(self.feature_layer)
            hook = layer.register_forward_hook(lambda m, i, o: captured.append(o))
            try:
                self.encoder(x)
            finally:
                hook.remove()
            return captured[-1]
        out = self.encoder(x)
        if isinstance(out, (list, tuple)) and out:
            out = out[-1]
        return out

    def _probe(self) -> tuple[int, int]:
        """Channels and stride of the encoder's deepest feature map, from a dummy pass (eval mode, no gradient)."""
        try:
            param = next(self.encoder.parameters())
            device, dtype = param.device, param.dtype
        except StopIteration:
            device, dtype = torch.device("cpu"), torch.float32
        dummy = torch.zeros(2, self.in_channels, *self.img_size, device=device, dtype=dtype)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                out = self.encoder(dummy)
                if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
                    out = out[-1]
                if not isinstance(out, torch.Tensor):
                    raise ValueError(
                        f"encoder ({type(self.encoder).__name__}) returns {type(out).__name__}: MaskedImageModel "
                        "serves encoders returning a feature map, a list of feature maps or ViTEncoder tokens."
                    )
                if not self._spatial(out):
                    if out.dim() != 2:
                        raise ValueError(
                            f"encoder ({type(self.encoder).__name__}) returns shape {tuple(out.shape)} for a "
                            f"{self.spatial_dims}-D input {tuple(dummy.shape)}: MaskedImageModel needs a feature map "
                            f"(B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W), a list of them, ViTEncoder "
                            "tokens or pooled features (B, C) computed from a child's feature map."
                        )
                    if self.feature_layer is None:
                        self.feature_layer = self._choose_layer(dummy)
                    out = self._deepest(dummy)
        finally:
            self.encoder.train(was_training)
        ratios = [s / f for s, f in zip(self.img_size, out.shape[2:])]
        stride = int(round(ratios[0]))
        if any(abs(r - stride) > 1e-6 for r in ratios) or stride < 1:
            raise ValueError(
                f"encoder ({type(self.encoder).__name__}): its deepest feature map {tuple(out.shape[2:])} of input "
                f"{tuple(self.img_size)} has strides {ratios}; MaskedImageModel needs one integer stride in every "
                "dimension (give an img_size divisible by the encoder's total stride)."
            )
        return int(out.shape[1]), stride

    # --- masked image modelling -------------------------------------------------------------------------------

    def random_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A random block mask ``(B, 1, *spatial)`` for input ``x`` (1 = masked)."""
        return random_patch_mask(x.shape[0], x.shape[2:], self.mask_patch_size, self.mask_ratio, device=x.device)

    def forward(self, x: torch.Tensor, mim_mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must be (B, {self.in_channels}, *{self.spatial_dims}-D size), got {tuple(x.shape)}."
            )
        mask = self.random_mask(x) if mim_mask is None else mim_mask.to(device=x.device, dtype=x.dtype)
        if self.vit:
            p = self.stride
            token_mask = mask[:, 0, ::p, ::p].reshape(x.shape[0], -1)
            tokens = ViTEncoder.forward(self.encoder, x, token_mask)[:, 1:]
            features = tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *self.encoder.grid)
        else:
            features = self._deepest(x * (1.0 - mask))
        pred = self.head(features)
        if tuple(pred.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} must be divisible by the encoder's stride {self.stride} "
                f"(the reconstruction has size {tuple(pred.shape[2:])})."
            )
        return {"mim": pred, "mim_mask": mask}

    def loss(self, x: torch.Tensor, mim_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The reconstruction loss of ``x`` over its masked pixels."""
        out = self(x, mim_mask)
        return self.loss_function(out["mim"], x, out["mim_mask"])
