"""Speed switches of a network's forward pass: mixed precision (autocast) and the channels-last memory format.

Only the forward pass runs in reduced precision: :class:`ForwardSettings` returns the network's floating outputs as
float32, so losses, metrics and post-processing stay in float32; parameters, gradients and checkpoints are float32
throughout (autocast casts per operation, the weights are never converted).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from ..errors import SettingsError

__all__ = ["MEMORY_FORMATS", "PRECISIONS", "ForwardSettings", "autocast_dtype", "float32_outputs"]

#: precision name -> autocast dtype (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: memory format name -> torch memory format.
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
}


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` ("fp32", "bf16", "fp16") on ``device``; None for fp32.

    Raises:
        SettingsError: an unknown name, or fp16 on a device other than CUDA (use bf16 there).
    """
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise SettingsError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'.")
    dtype = PRECISIONS[key]
    if dtype == torch.float16 and torch.device(device).type != "cuda":
        raise SettingsError(f"precision 'fp16' needs a CUDA device, got '{device}'; use 'bf16' or 'fp32'.")
    return dtype


def float32_outputs(output: Any) -> Any:
    """``output`` (tensor, mapping, list or tuple of them) with every floating tensor cast to float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() and output.dtype != torch.float32 else output
    if isinstance(output, Mapping):
        return {k: float32_outputs(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)) and not hasattr(output, "_fields"):
        return type(output)(float32_outputs(v) for v in output)
    return output


class ForwardSettings:
    """How a network's forward pass runs: autocast dtype and memory format; outputs come back as float32.

    Args:
        precision: "fp32" (no autocast), "bf16" (CPU or CUDA) or "fp16" (CUDA only; training adds a GradScaler).
        memory_format: "contiguous" or "channels_last" (4-D inputs and 2-D convolution weights only; other
            tensors keep their layout).
        device: the device the network runs on (decides autocast's device type and whether fp16 is allowed).
    """

    def __init__(
        self, precision: str = "fp32", memory_format: str = "contiguous", device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.precision = str(precision).strip().lower()
        self.dtype = autocast_dtype(self.precision, self.device)
        key = str(memory_format).strip().lower()
        if key not in MEMORY_FORMATS:
            raise SettingsError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got '{memory_format}'.")
        self.memory_format = key
        self._formatted: set[int] = set()

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def autocast(self) -> AbstractContextManager:
        """``torch.autocast`` for the configured dtype, or a null context for fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare_network(self, network: nn.Module) -> nn.Module:
        """Convert ``network``'s 4-D weights to channels-last once (in place; a no-op for "contiguous")."""
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        if self.channels_last and id(network) not in self._formatted:
            with torch.no_grad():  # 4-D tensors only: Module.to(memory_format=...) fails on 5-D (3-D conv) weights
                for t in list(network.parameters()) + list(network.buffers()):
                    if t.dim() == 4:
                        t.data = t.data.contiguous(memory_format=torch.channels_last)
            self._formatted.add(id(network))
        return network

    def prepare_input(self, x: Any) -> Any:
        """``x`` in the configured memory format where it is a 4-D tensor."""
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, network: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """``network(inputs, *args, **kwargs)`` under these settings; floating outputs as float32."""
        if isinstance(network, nn.Module):
            self.prepare_network(network)
        with self.autocast():
            out = network(self.prepare_input(inputs), *args, **kwargs)
        return float32_outputs(out)

    def wrap(self, network: Any) -> _SettingsNetwork:
        """A callable running ``network`` through :meth:`forward`; other attributes are ``network``'s own."""
        return _SettingsNetwork(network, self)

    def __repr__(self) -> str:
        return f"ForwardSettings(precision='{self.precision}', memory_format='{self.memory_format}')"


class _SettingsNetwork:
    """``network`` called through ``settings.forward``; attribute access falls through to the network."""

    def __init__(self, network: Any, settings: ForwardSettings) -> None:
        self._network, self._settings = network, settings

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return self._settings.forward(self._network, inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._network, name)
