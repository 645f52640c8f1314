"""Optimiser parameter groups for fine-tuning: a lower learning rate for a pretrained encoder than for the heads,
and layer-wise learning-rate decay for encoders with numbered layers (ViTs)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from ..errors import SettingsError
from .pretrained import submodule

__all__ = ["encoder_of", "encoder_param_groups"]


def encoder_of(network: nn.Module, encoder: str = "encoder") -> nn.Module:
    """The encoder submodule ``encoder`` of ``network`` (DDP/DataParallel wrappers are looked through)."""
    if not encoder or encoder == "network":
        raise ValueError(f"encoder must name a submodule, got '{encoder}'.")
    return submodule(network, encoder)


def _unique(params: Iterable[nn.Parameter], seen: set[int]) -> list[nn.Parameter]:
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def encoder_param_groups(
    network: nn.Module,
    lr: float,
    encoder_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
    encoder: str = "encoder",
    extra: Iterable[nn.Parameter] | Iterator[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Parameter groups of ``network`` for a ``torch.optim`` optimiser: the encoder's at ``lr * encoder_lr_scale``
    (times ``layer_decay ** (L + 1 - layer)`` per layer), every other parameter (heads, and ``extra`` such as a
    loss weighting's) at ``lr``.

    Every parameter is in a group, trainable or not, so an encoder frozen for the first epochs (see
    :class:`~common.handlers.FreezeEncoder`) is trained once unfrozen. Each group has a ``"name"`` (``"other"``
    first, so ``param_groups[0]`` has the base rate; then ``"encoder"`` or ``"encoder_layer_<i>"``) and an
    ``"lr"``; the optimiser's other settings apply to all groups. With ``encoder_lr_scale`` and ``layer_decay`` 1
    there is one group ``"all"``, as ``network.parameters()`` gave before (so older resume checkpoints still load).

    Args:
        network: the network (a DDP wrapper is looked through).
        lr: the base learning rate (of the heads).
        encoder_lr_scale: factor of the encoder's learning rate (e.g. 0.1 for a pretrained encoder).
        layer_decay: layer-wise decay in (0, 1]; below 1 the encoder must number its layers with a
            ``layer_ids()`` method (parameter name -> layer 0 .. L + 1, as :class:`~common.networks.ViTEncoder`).
        encoder: name of the encoder submodule.
        extra: further parameters trained at ``lr``.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if encoder_lr_scale < 0:
        raise ValueError(f"encoder_lr_scale must be >= 0, got {encoder_lr_scale}.")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
    enc = encoder_of(network, encoder)
    core = submodule(network, None)
    seen: set[int] = set()
    if encoder_lr_scale == 1 and layer_decay == 1:
        return [{"name": "all", "params": _unique(list(core.parameters()) + list(extra), seen), "lr": lr}]
    groups: list[dict[str, Any]] = []
    named = list(enc.named_parameters())
    if layer_decay < 1:
        if not hasattr(enc, "layer_ids"):
            raise SettingsError(
                f"layer_decay {layer_decay} needs an encoder with numbered layers (layer_ids()); "
                f"{type(enc).__name__} has none: set layer_decay to 1."
            )
        ids: dict[str, int] = enc.layer_ids()
        top = max(ids.values())
        by_layer: dict[int, list[nn.Parameter]] = {}
        for name, p in named:
            by_layer.setdefault(int(ids.get(name, top)), []).append(p)
        for layer in sorted(by_layer):
            scale = encoder_lr_scale * layer_decay ** (top - layer)
            params = _unique(by_layer[layer], seen)
            groups.append({"name": f"encoder_layer_{layer}", "params": params, "lr": lr * scale})
    else:
        groups.append({"name": "encoder", "params": _unique((p for _, p in named), seen), "lr": lr * encoder_lr_scale})
    others = _unique(list(core.parameters()) + list(extra), seen)
    groups.insert(0, {"name": "other", "params": others, "lr": lr})
    return [g for g in groups if g["params"]]
