"""Training strategies by name: a bundle config's table of phase schedules, checked against the name asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SettingsError

__all__ = ["strategy_phases", "trained_tasks"]


def strategy_phases(strategies: Mapping[str, Sequence[Mapping[str, Any]]], strategy: str) -> list[dict[str, Any]]:
    """The phase schedule (``[{"epochs": n, "tasks": [...]}, ...]``) of ``strategy`` in a config's ``strategies``.

    Raises:
        ValueError: ``strategy`` is not a key of ``strategies``; the message lists the valid names.
    """
    if not isinstance(strategies, Mapping) or not strategies:
        raise ValueError(f"strategies must be a non-empty mapping of name -> phases, got {strategies!r}.")
    if strategy not in strategies:
        raise SettingsError(f"strategy must be one of {sorted(strategies)}, got '{strategy}'.")
    return [dict(phase) for phase in strategies[strategy]]


def trained_tasks(phases: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tasks trained in any phase of a schedule, in first-seen order."""
    out: list[str] = []
    for phase in phases:
        out += [t for t in phase["tasks"] if t not in out]
    return out
