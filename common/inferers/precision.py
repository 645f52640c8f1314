"""An inferer wrapper running the network's forward pass in mixed precision and/or channels-last memory format."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

from ..engines.precision import ForwardSettings

__all__ = ["PrecisionInferer"]


class PrecisionInferer(Inferer):
    """Runs ``inferer`` with each network call under autocast (``precision``) and ``memory_format``.

    Only the network calls change: the wrapped inferer's own work (window aggregation, crops, pasting) and everything
    after it (post-processing, metrics) see float32 outputs, as with ``precision="fp32"``.

    Args:
        inferer: the inferer to wrap (default ``SimpleInferer``).
        precision: "fp32", "bf16" or "fp16" (CUDA only).
        memory_format: "contiguous" or "channels_last".
        device: the device the network runs on.
    """

    def __init__(
        self,
        inferer: Inferer | None = None,
        precision: str = "fp32",
        memory_format: str = "contiguous",
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise ValueError(f"inferer must be a callable inferer, got {type(inferer).__name__}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.settings = ForwardSettings(precision, memory_format, device)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inferer(inputs, self.settings.wrap(network), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # attributes of the wrapped inferer (e.g. roi_size) stay reachable
        if name in ("inferer", "settings"):
            raise AttributeError(name)
        return getattr(self.inferer, name)
