"""Per-iteration learning-rate schedules that spend the whole training budget: warm-up, then decay to ~0."""

from __future__ import annotations

from monai.optimizers import WarmupCosineSchedule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import SettingsError

__all__ = ["LR_SCHEDULES", "build_lr_schedule"]

#: the schedule names :func:`build_lr_schedule` knows.
LR_SCHEDULES = ("cosine", "linear", "constant")


def build_lr_schedule(optimizer: Optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine") -> LambdaLR:
    """A per-iteration schedule: linear warm-up over ``warmup_steps``, then ``kind`` until ``total_steps``.

    ``cosine`` (MONAI's ``WarmupCosineSchedule``) and ``linear`` decay to 0 at ``total_steps`` (the last iteration
    of the last epoch); ``constant`` keeps the base rate after the warm-up. The scheduler's state is a ``LambdaLR``
    state dict, so it is checkpointed and resumed like any scheduler.

    Args:
        optimizer: the optimiser whose learning rates are scheduled.
        warmup_steps: iterations of linear warm-up (0: none).
        total_steps: iterations of the whole run (epochs x iterations per epoch).
        kind: one of :data:`LR_SCHEDULES`.
    """
    name = str(kind).strip().lower()
    if name not in LR_SCHEDULES:
        raise SettingsError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got '{kind}'.")
    total, warmup = int(total_steps), int(warmup_steps)
    if total < 0:  # 0 is allowed: a config built without data (e.g. a workflow property check) has no iterations
        raise ValueError(f"total_steps must be >= 0, got {total_steps}.")
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    warmup = min(warmup, total)
    if name == "cosine":
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if name == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(optimizer, factor)
