"""Choosing the trainer by config: joint multi-task training or cooperative (MT-CooL-style) training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .cooperative import CooperativeTrainer
from .trainer import MultiTaskTrainer

__all__ = ["build_trainer"]


def build_trainer(cooperative: Mapping[str, Any] | None = None, **kwargs: Any) -> MultiTaskTrainer:
    """A :class:`MultiTaskTrainer`, or a :class:`CooperativeTrainer` with ``cooperative``'s arguments (``rho``,
    ``perturb``) where it is a mapping: lets a bundle config pick joint or cooperative training by strategy.

    Args:
        cooperative: None for joint training; else the CooperativeTrainer-only arguments.
        kwargs: the arguments of :class:`MultiTaskTrainer`.
    """
    if cooperative is None:
        return MultiTaskTrainer(**kwargs)
    if not isinstance(cooperative, Mapping):
        raise ValueError(f"cooperative must be None or a mapping of CooperativeTrainer arguments, got {cooperative!r}.")
    return CooperativeTrainer(**dict(cooperative), **kwargs)
