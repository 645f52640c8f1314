"""Looking through data-parallel wrappers."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap_parallel"]


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper; ``network`` itself otherwise."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network
