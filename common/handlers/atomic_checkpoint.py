"""MONAI's CheckpointSaver with atomic writes, so a run killed while saving never leaves a truncated file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class _AtomicDiskSaver(DiskSaver):
    """Atomic ``DiskSaver`` (temporary file, then rename) with MONAI's optional fixed file name."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=name, metadata=metadata)
        path = os.path.join(self.dirname, name)
        if os.path.exists(path):  # atomic saves are user-only (mkstemp); give group/others read as MONAI does
            os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is overwritten, never removed
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically.

    MONAI writes checkpoints in place (``atomic=False``), so a process killed during a save leaves a truncated
    ``model.pt`` or epoch checkpoint and loses the previous good one. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))
