"""ViT with a classification head on the CLS token and a SimMIM masked-image-modelling head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from monai.utils import ensure_tuple_rep
from torch import nn

from .multitask import MultiTaskNet

__all__ = ["ViTEncoder", "ViTClassifierMIM", "attention_rollout"]


class ViTEncoder(nn.Module):
    """MONAI ViT backbone (patch embedding + transformer blocks) with a CLS token and a SimMIM mask token.

    ``forward(x, token_mask)`` returns the normalised tokens ``(B, 1 + N, hidden_size)``, CLS first. Where
    ``token_mask`` is 1 the patch embedding is replaced by the learnable mask token before the position
    embedding is added, as in SimMIM (Xie et al. 2022).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: int = 8,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_layers: int = 6,
        num_heads: int = 3,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        save_attn: bool = False,
    ) -> None:
        super().__init__()
        img_size = ensure_tuple_rep(img_size, 2)
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}.")
        self.patch_size = patch_size
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    hidden_size,
                    mlp_dim,
                    num_heads,
                    dropout_rate,
                    qkv_bias,
                    save_attn=save_attn,
                    use_flash_attention=not save_attn,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def layer_ids(self) -> dict[str, int]:
        """Layer of every parameter for layer-wise learning-rate decay (see
        :func:`~common.networks.encoder_param_groups`): embeddings and tokens 0, block ``i`` ``i + 1``, the final
        norm ``num_layers + 1``."""
        top = len(self.blocks) + 1
        ids = {}
        for name, _ in self.named_parameters():
            if name.startswith("blocks."):
                ids[name] = int(name.split(".")[1]) + 1
            else:
                ids[name] = top if name.startswith("norm.") else 0
        return ids

    def forward(self, x: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        pe = self.patch_embedding
        tokens = pe.patch_embeddings(x).flatten(2).transpose(-1, -2)  # (B, N, D)
        if token_mask is not None:
            w = token_mask.reshape(tokens.shape[0], -1, 1).to(tokens.dtype)
            tokens = tokens * (1.0 - w) + self.mask_token.to(tokens.dtype) * w
        tokens = pe.dropout(tokens + pe.position_embeddings)
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)


class ViTClassifierMIM(MultiTaskNet):
    """Tumour-slice classification (CLS token) + SimMIM reconstruction, sharing one ViT encoder.

    Outputs ``{"cls": (B, num_classes) logits, "mim": (B, C, H, W) reconstruction}``. Without ``mim_mask`` one
    clean pass feeds both heads (inference). With ``mim_mask`` (``(B, 1, H, W)``, 1 = masked, in blocks that are a
    multiple of ``patch_size``) the MIM head reconstructs from a masked pass while the classification head sees
    the clean image; both passes run as one batch. ``classify=False`` skips the clean pass (MIM pre-training).
    ``shared_pass=True`` classifies the masked pass too: one encoder pass per training step instead of two (the
    classification head then learns from masked images, a strong augmentation); inference is the clean pass
    either way.

    Args:
        in_channels: number of MR modalities stacked as channels.
        img_size: slice size (H, W) or one int.
        patch_size: ViT patch size in pixels.
        hidden_size, mlp_dim, num_layers, num_heads, dropout_rate, qkv_bias: transformer settings.
        num_classes: classification outputs (1 = one logit for a binary task).
        save_attn: keep attention matrices for attention maps (slower; inference only).
        shared_pass: with ``mim_mask``, feed both heads from the masked pass (no clean pass while training).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: int = 8,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_layers: int = 6,
        num_heads: int = 3,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        num_classes: int = 1,
        save_attn: bool = False,
        shared_pass: bool = False,
    ) -> None:
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        encoder = ViTEncoder(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, dropout_rate, qkv_bias,
            save_attn,
        )
        heads = {
            "cls": nn.Sequential(nn.Dropout(dropout_rate), nn.Linear(hidden_size, num_classes)),
            "mim": nn.Linear(hidden_size, patch_size * patch_size * in_channels),
        }
        super().__init__(encoder, heads)
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.shared_pass = shared_pass

    def _reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        gh, gw = self.encoder.grid
        p = self.patch_size
        pix = self.heads["mim"](tokens)  # (B, N, p*p*C)
        pix = pix.transpose(1, 2).reshape(b, self.in_channels * p * p, gh, gw)
        return nn.functional.pixel_shuffle(pix, p)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, mim_mask: Optional[torch.Tensor] = None, classify: bool = True
    ) -> dict[str, torch.Tensor]:
        if mim_mask is None:
            tokens = self.encoder(x, None)
            return {"cls": self.heads["cls"](tokens[:, 0]), "mim": self._reconstruct(tokens[:, 1:])}
        p = self.patch_size
        token_mask = mim_mask[:, 0, ::p, ::p].reshape(x.shape[0], -1)
        if not classify or self.shared_pass:
            tokens = self.encoder(x, token_mask)
            return {"cls": self.heads["cls"](tokens[:, 0]), "mim": self._reconstruct(tokens[:, 1:])}
        b = x.shape[0]
        both = self.encoder(torch.cat((x, x), 0), torch.cat((torch.zeros_like(token_mask), token_mask), 0))
        return {"cls": self.heads["cls"](both[:b, 0]), "mim": self._reconstruct(both[b:, 1:])}


def attention_rollout(encoder: ViTEncoder, discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of the last forward pass: CLS-to-patch relevance ``(B, gh, gw)``.

    The encoder must have been built with ``save_attn=True``.
    """
    mats = [blk.attn.att_mat for blk in encoder.blocks]
    if any(m.numel() == 0 for m in mats):
        raise ValueError("encoder must be built with save_attn=True and run once before attention_rollout.")
    rollout = None
    for att in mats:
        a = att.mean(dim=1)  # heads
        if discard_ratio > 0:
            flat = a.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k > 0:
                idx = flat.topk(k, dim=1, largest=False).indices
                flat = flat.scatter(1, idx, 0.0)
                a = flat.view_as(a)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    rel = rollout[:, 0, 1:]
    lo, hi = rel.amin(dim=1, keepdim=True), rel.amax(dim=1, keepdim=True)
    rel = (rel - lo) / (hi - lo).clamp_min(1e-12)
    return rel.reshape(rel.shape[0], *encoder.grid)
