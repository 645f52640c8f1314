"""Multi-task loss: per-task losses on task-keyed predictions, skipping samples whose label is unknown."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["MultiTaskLoss", "valid_sample_mask"]


def valid_sample_mask(target: torch.Tensor, missing_value: float | None) -> torch.Tensor:
    """Per-sample boolean mask of known labels: a sample is unknown where any of its values is ``missing_value``.

    ``missing_value=nan`` marks NaN labels as unknown; ``None`` means every sample is labelled.
    """
    b = target.shape[0]
    if missing_value is None:
        return torch.ones(b, dtype=torch.bool, device=target.device)
    flat = target.reshape(b, -1)
    if isinstance(missing_value, float) and math.isnan(missing_value):
        unknown = torch.isnan(flat) if flat.is_floating_point() else torch.zeros_like(flat, dtype=torch.bool)
    else:
        unknown = flat == missing_value
    return ~unknown.any(dim=1)


class MultiTaskLoss(nn.Module):
    """Applies one loss per task and returns ``{task: scalar loss}`` for the tasks that have labelled samples.

    The per-task losses are plain losses (``nn.BCEWithLogitsLoss``, MONAI ``DiceLoss``, ...): this module selects
    the samples whose label is known before calling them, so a sample with one task's label missing still
    trains the other tasks. Combining the losses is the job of a :class:`common.weighting.Weighting`.

    Args:
        tasks: task name -> spec with keys ``loss`` (callable ``loss(pred, target[, weight])``), ``target`` (key of
            the target in the targets dict, default the task name), optional ``weight`` (key of a per-pixel or
            per-sample weight passed as third argument, e.g. the MIM mask: looked up in the targets, else in the
            network's outputs), optional ``missing_value`` (label value meaning "unknown", e.g. -1 or ``nan``),
            optional ``target_dtype`` ("float" or "long").
    """

    def __init__(self, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks must hold at least one task spec.")
        self.specs: dict[str, dict[str, Any]] = {}
        losses = {}
        for name, spec in tasks.items():
            if "loss" not in spec or not callable(spec["loss"]):
                raise ValueError(f"tasks['{name}'] must have a callable 'loss'.")
            dtype = spec.get("target_dtype", "float")
            if dtype not in ("float", "long"):
                raise ValueError(f"tasks['{name}']['target_dtype'] must be 'float' or 'long', got '{dtype}'.")
            missing = spec.get("missing_value")
            self.specs[name] = {
                "target": spec.get("target", name),
                "weight": spec.get("weight"),
                "missing_value": None if missing is None else float(missing),
                "target_dtype": dtype,
            }
            if isinstance(spec["loss"], nn.Module):
                losses[name] = spec["loss"]
        self.loss_modules = nn.ModuleDict(losses)
        self._fns: dict[str, Callable] = {n: s["loss"] for n, s in tasks.items()}

    @property
    def task_names(self) -> list[str]:
        return list(self.specs)

    def forward(
        self,
        preds: Mapping[str, torch.Tensor],
        targets: Mapping[str, Any],
        tasks: Collection[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-task losses of the active ``tasks`` (default all) that have at least one known label."""
        out: dict[str, torch.Tensor] = {}
        for name, spec in self.specs.items():
            if tasks is not None and name not in tasks:
                continue
            if name not in preds:
                raise ValueError(f"preds has no output for task '{name}'; outputs: {sorted(preds)}.")
            if spec["target"] not in targets:
                raise ValueError(f"targets has no '{spec['target']}' for task '{name}'; keys: {sorted(targets)}.")
            pred = preds[name]
            target = torch.as_tensor(targets[spec["target"]], device=pred.device)
            valid = valid_sample_mask(target, spec["missing_value"])
            if not bool(valid.any()):
                continue
            target = target.long() if spec["target_dtype"] == "long" else target.to(pred.dtype)
            if spec["target_dtype"] == "float" and target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
                target = target.unsqueeze(1)
            args = [pred[valid], target[valid]]
            if spec["weight"] is not None:
                source = targets if spec["weight"] in targets else preds  # e.g. the mask a masked image model drew
                if spec["weight"] not in source:
                    raise ValueError(
                        f"neither targets nor outputs hold weight '{spec['weight']}' of task '{name}'; targets: "
                        f"{sorted(targets)}, outputs: {sorted(preds)}."
                    )
                args.append(torch.as_tensor(source[spec["weight"]], device=pred.device)[valid])
            out[name] = self._fns[name](*args)
        return out
