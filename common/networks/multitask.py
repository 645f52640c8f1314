"""Hard-parameter-sharing multi-task network: one shared encoder, named task heads, dict outputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

__all__ = ["MultiTaskNet"]


class MultiTaskNet(nn.Module):
    """A shared ``encoder`` followed by one head per task; ``forward`` returns ``{task: head(encoder(x))}``.

    Subclasses with a richer forward (e.g. masked inputs) keep the ``encoder``/``heads`` attributes so that
    weighting methods can tell shared from task-specific parameters.

    Args:
        encoder: module shared by all tasks.
        heads: task name -> head module applied to the encoder's output.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads must hold at least one task head.")
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def task_names(self) -> list[str]:
        """Names of the task heads, in order."""
        return list(self.heads.keys())

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters shared by every task (the encoder's)."""
        return self.encoder.parameters()

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the ``encoder`` submodule (the part pretrained weights usually fit)."""
        return self.encoder.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters of one task's head."""
        if task not in self.heads:
            raise ValueError(f"task must be one of {self.task_names}, got '{task}'.")
        return self.heads[task].parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        return {name: head(features) for name, head in self.heads.items()}
