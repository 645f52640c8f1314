"""Ignite/MONAI engines for multi-task training and evaluation."""

from __future__ import annotations

from .cooperative import CooperativeTrainer, build_trainer
from .prepare_batch import MultiTaskPrepareBatch
from .resume import ResumeCheckpoint, find_resume_checkpoint
from .trainer import MultiTaskTrainer, active_tasks_for_epoch
