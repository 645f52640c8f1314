"""Resuming an interrupted training run from its last checkpoint, only when the run configuration matches."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["find_resume_checkpoint", "ResumeSignature", "SIGNATURE_FILE"]

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "resume_signature.json"


def _epoch_of(path: str) -> int:
    m = re.search(r"=(\d+)\.pt$", path)
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(ckpt_dir: str, signature: Mapping[str, Any] | None = None, prefix: str = "resume") -> str | None:
    """Path of the newest ``<prefix>_*=<epoch>.pt`` in ``ckpt_dir``, or None.

    With a ``signature`` (the settings that define a run: data, strategy, ...) the checkpoint is used only if the
    run that wrote it saved the same signature; otherwise a warning says why training starts from scratch, so a
    demo run's checkpoint is never resumed on another data set.
    """
    paths = sorted(glob.glob(os.path.join(ckpt_dir, f"{prefix}_*.pt")), key=_epoch_of)
    if not paths:
        return None
    if signature is not None:
        sig_path = os.path.join(ckpt_dir, SIGNATURE_FILE)
        try:
            with open(sig_path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None
        current = json.loads(json.dumps(dict(signature), default=str))
        if saved != current:
            logger.warning(
                f"not resuming from {paths[-1]}: it was written by a run with settings {saved}, this run has "
                f"{current}; training starts from scratch (the old checkpoint is replaced after the first epoch)."
            )
            return None
    logger.info(f"resuming training from {paths[-1]}")
    return paths[-1]


class ResumeSignature:
    """Writes the run's signature beside its checkpoints when training starts (see :func:`find_resume_checkpoint`)."""

    def __init__(self, ckpt_dir: str, signature: Mapping[str, Any]) -> None:
        self.ckpt_dir, self.signature = str(ckpt_dir), dict(signature)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        os.makedirs(self.ckpt_dir, exist_ok=True)
        if engine.state.epoch >= (engine.state.max_epochs or 0):
            logger.warning(
                f"training is already complete ({engine.state.epoch}/{engine.state.max_epochs} epochs); "
                "pass --resume false to train again from scratch."
            )
        with open(os.path.join(self.ckpt_dir, SIGNATURE_FILE), "w") as f:
            json.dump(json.loads(json.dumps(self.signature, default=str)), f, indent=2)
