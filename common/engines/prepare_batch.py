"""Batch preparation for multi-task engines: image, a dict of task targets, and network keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

__all__ = ["MultiTaskPrepareBatch"]


def _to_device(value: Any, device: str | torch.device | None, non_blocking: bool, **kwargs: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, non_blocking=non_blocking, **kwargs)
    return value


class MultiTaskPrepareBatch(PrepareBatch):
    """Returns ``(image, targets, (), network_kwargs)`` from a dict batch, as MONAI engines expect.

    Args:
        image_key: key of the network input.
        target_keys: keys copied into the targets dict (labels, masks, and the image itself for reconstruction).
        network_kwargs: network keyword -> batch key, e.g. ``{"mim_mask": "mim_mask"}``.
        meta_keys: keys copied into targets without moving to the device (case ids, slice indices).
    """

    def __init__(
        self,
        image_key: str = CommonKeys.IMAGE,
        target_keys: Sequence[str] = (CommonKeys.LABEL,),
        network_kwargs: Mapping[str, str] | None = None,
        meta_keys: Sequence[str] = (),
    ) -> None:
        self.image_key = image_key
        self.target_keys = list(target_keys)
        self.network_kwargs = dict(network_kwargs or {})
        self.meta_keys = list(meta_keys)

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any], tuple, dict[str, Any]]:
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"batchdata must be a dict, got {type(batchdata).__name__}.")
        missing = [k for k in [self.image_key, *self.target_keys, *self.network_kwargs.values()] if k not in batchdata]
        if missing:
            raise ValueError(f"batch is missing keys {missing}; it has {sorted(batchdata)}.")
        image = _to_device(batchdata[self.image_key], device, non_blocking, **kwargs)
        targets = {k: _to_device(batchdata[k], device, non_blocking, **kwargs) for k in self.target_keys}
        for k in self.meta_keys:
            if k in batchdata:
                targets[k] = batchdata[k]
        net_kwargs = {
            a: _to_device(batchdata[k], device, non_blocking, **kwargs) for a, k in self.network_kwargs.items()
        }
        return image, targets, (), net_kwargs
