"""Ignite/MONAI engines for multi-task training and evaluation, and the choice between them by config."""

from __future__ import annotations

from .cooperative import CooperativeTrainer
from .factory import build_trainer
from .precision import MEMORY_FORMATS, PRECISIONS, ForwardSettings, autocast_dtype, float32_outputs
from .prepare_batch import MultiTaskPrepareBatch
from .schedules import LR_SCHEDULES, build_lr_schedule
from .strategies import strategy_phases, trained_tasks
from .trainer import MultiTaskTrainer, active_tasks_for_epoch

__all__ = [
    "LR_SCHEDULES",
    "build_lr_schedule",
    "MEMORY_FORMATS",
    "PRECISIONS",
    "ForwardSettings",
    "autocast_dtype",
    "float32_outputs",
    "CooperativeTrainer",
    "MultiTaskPrepareBatch",
    "MultiTaskTrainer",
    "active_tasks_for_epoch",
    "build_trainer",
    "strategy_phases",
    "trained_tasks",
]
