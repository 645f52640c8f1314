"""MONAI's CheckpointSaver with atomic writes, so a run killed while saving never leaves a truncated file; the
best-model file keeps the best score of a resumed run and records the run's settings beside it."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "settings_path"]

logger = logging.getLogger(__name__)


def settings_path(model_path: str) -> str:
    """Path of the JSON file recording the settings of the run that wrote ``model_path`` (``model.pt`` ->
    ``model_settings.json``)."""
    root, _ = os.path.splitext(str(model_path))
    return f"{root}_settings.json"


def write_json_atomic(path: str, content: Any) -> None:
    """Write ``content`` as JSON to ``path`` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json.loads(json.dumps(content, default=str)), f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _AtomicDiskSaver(DiskSaver):
    """Atomic ``DiskSaver`` (temporary file, then rename) with MONAI's optional fixed file name."""

    def __init__(self, dirname: str, filename: str | None = None, settings: Mapping | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename, self.settings = filename, settings

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=name, metadata=metadata)
        path = os.path.join(self.dirname, name)
        if os.path.exists(path):  # atomic saves are user-only (mkstemp); give group/others read as MONAI does
            os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)
        if self.settings is not None:
            write_json_atomic(settings_path(path), dict(self.settings))

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is overwritten, never removed
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically.

    MONAI writes checkpoints in place (``atomic=False``), so a process killed during a save leaves a truncated
    ``model.pt`` or epoch checkpoint and loses the previous good one.

    The best-model file (``save_key_metric``) is replaced only by a better score than the engine's
    ``state.best_metric``: a resumed run (see :class:`~common.handlers.ResumeCheckpoint` ``validator``) restores
    that state, so a worse epoch after the restart does not overwrite the best model of the first part of the run.

    Args:
        settings: the run's settings (network sizes, tasks, strategy, ...), written as JSON beside every
            best-model or final file (``model.pt`` -> ``model_settings.json``, see :func:`settings_path`), so that
            evaluation and inference can refuse a model built with other settings.
        args, kwargs: the arguments of ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_sign = bool(kwargs.get("key_metric_negative_sign", False))
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping, got {type(settings).__name__}.")
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                keep = settings if ckpt is not self._interval_checkpoint else None
                ckpt.save_handler = _AtomicDiskSaver(
                    self.save_dir, getattr(ckpt.save_handler, "filename", None), keep
                )

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._continue_best)

    def _continue_best(self, engine: Engine) -> None:
        """Seed the best-model tracker with the engine's (resumed) best score, once, if the file is there."""
        ckpt = self._key_metric_checkpoint
        if ckpt is None or ckpt._saved or getattr(engine.state, "best_metric_epoch", -1) in (-1, None):
            return
        handler = ckpt.save_handler
        name = getattr(handler, "filename", None)
        if name is None or not os.path.isfile(os.path.join(self.save_dir, name)):
            return  # the best model file is gone: the next validation writes it again
        sign = -1 if self._negative_sign else 1
        ckpt._saved.append(Checkpoint.Item(sign * float(engine.state.best_metric), name))
