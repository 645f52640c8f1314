"""Resuming an interrupted training run from its last checkpoint, only when the run configuration matches."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from .atomic_checkpoint import AtomicCheckpointSaver
from .ema import EMAWeights

__all__ = ["SIGNATURE_FILE", "BestMetricState", "ResumeCheckpoint", "find_resume_checkpoint"]

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "resume_signature.json"


def _epoch_of(path: str) -> int:
    m = re.search(r"=(\d+)\.pt$", path)
    return int(m.group(1)) if m else -1


def _loadable(path: str) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception as err:  # a truncated or corrupt file (e.g. disk full during a save)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        logger.warning(f"skipping checkpoint {path}: it cannot be loaded ({type(err).__name__}: {first_line}).")
        return False


def find_resume_checkpoint(
    ckpt_dir: str, signature: Mapping[str, Any] | None = None, prefix: str = "resume"
) -> str | None:
    """Path of the newest loadable ``<prefix>_*=<epoch>.pt`` in ``ckpt_dir``, or None.

    With a ``signature`` (the settings that define a run: data, strategy, ...) the checkpoint is used only if the
    run that wrote it saved the same signature; otherwise a warning says why training starts from scratch, so a
    demo run's checkpoint is never resumed on another data set. A file that cannot be loaded is skipped (with a
    warning naming it) in favour of an older one.
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
    for path in reversed(paths):
        if _loadable(path):
            logger.info(f"resuming training from {path}")
            return path
    return None


class BestMetricState:
    """The best validation score of a run as a checkpointable object: a validator's ``state.best_metric`` and
    ``state.best_metric_epoch`` (MONAI evaluators), plus an early-stopping handler's patience counter and best
    score where one is given.

    Args:
        validator: the evaluator whose key metric decides the best model.
        early_stop: ``monai.handlers.EarlyStopHandler`` or ``ignite.handlers.EarlyStopping`` (or None).
    """

    def __init__(self, validator: Engine, early_stop: Any = None) -> None:
        if not hasattr(validator, "state"):
            raise ValueError(f"validator must be an ignite engine, got {type(validator).__name__}.")
        self.validator, self.early_stop = validator, early_stop

    def _stopper(self) -> Any:
        # MONAI's EarlyStopHandler holds an ignite EarlyStopping, created once a trainer is set
        return getattr(self.early_stop, "_handler", self.early_stop)

    def state_dict(self) -> dict[str, Any]:
        state = self.validator.state
        out: dict[str, Any] = {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
            "key_metric_name": str(getattr(state, "key_metric_name", "")),
        }
        stopper = self._stopper()
        if stopper is not None and hasattr(stopper, "state_dict"):
            stop = stopper.state_dict()
            best = stop.get("best_score")
            out["early_stop"] = {
                "counter": int(stop.get("counter", 0)),
                "best_score": None if best is None else float(best),
            }
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = self.validator.state
        state.best_metric = float(state_dict["best_metric"])
        state.best_metric_epoch = int(state_dict["best_metric_epoch"])
        stopper = self._stopper()
        saved_stop = state_dict.get("early_stop")
        if stopper is not None and saved_stop is not None and hasattr(stopper, "load_state_dict"):
            stop = dict(stopper.state_dict())
            stop.update(counter=int(saved_stop["counter"]), best_score=saved_stop["best_score"])
            stopper.load_state_dict(stop)
        if state.best_metric_epoch > 0:
            name = state_dict.get("key_metric_name") or "key metric"
            logger.info(
                f"resumed best metric of {name}: {state.best_metric} at epoch {state.best_metric_epoch}; "
                "the best model is replaced only by a better one."
            )


class ResumeCheckpoint:
    """Saves the training state every epoch and, on start, resumes from the last save of the same run.

    The saved state is ``objects`` (network, optimiser, scheduler, weighting, ...) plus the trainer itself (epoch
    and iteration), added at ``attach`` time so configs need no circular reference to the trainer. A signature
    file beside the checkpoint records the run's settings; a checkpoint of a run with other settings is not
    resumed (see :func:`find_resume_checkpoint`). Every rank resumes; only rank 0 writes files.

    With a ``validator`` the checkpoint also holds the best validation score and its epoch (and the early-stopping
    state), so a resumed run continues them: a worse epoch after the restart neither logs "Got new best metric"
    nor replaces the best model (see :class:`BestMetricState`).

    Args:
        ckpt_dir: folder of ``<prefix>_checkpoint_epoch=N.pt`` and the signature file.
        objects: name -> object with ``state_dict``/``load_state_dict``.
        signature: the run's defining settings (JSON-serialisable).
        resume: resume when a matching checkpoint exists.
        prefix: checkpoint file prefix.
        map_location: device the checkpoint is loaded to.
        validator: the evaluator whose key metric selects the best model (None: no best score is kept).
        early_stop: an early-stopping handler attached to ``validator`` whose state is kept too.
    """

    def __init__(
        self,
        ckpt_dir: str,
        objects: Mapping[str, Any],
        signature: Mapping[str, Any] | None = None,
        resume: bool = True,
        prefix: str = "resume",
        map_location: Any = None,
        validator: Engine | None = None,
        early_stop: Any = None,
    ) -> None:
        self.ckpt_dir, self.objects = str(ckpt_dir), dict(objects)
        self.signature = dict(signature) if signature is not None else {}
        if isinstance(resume, str):  # `--resume false` on the monai.bundle command line arrives as a string
            if resume.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"resume must be true or false, got '{resume}'.")
            resume = resume.strip().lower() in ("true", "1", "yes")
        self.resume, self.prefix, self.map_location = bool(resume), prefix, map_location
        if early_stop is not None and validator is None:
            raise ValueError("early_stop needs the validator it is attached to.")
        self.best = BestMetricState(validator, early_stop) if validator is not None else None
        self._saver: AtomicCheckpointSaver | None = None
        self._saver_attached = False

    def attach(self, engine: Engine) -> None:
        objects = dict(self.objects, trainer=engine)
        if self.best is not None:
            objects["best_metric"] = self.best
        path = find_resume_checkpoint(self.ckpt_dir, self.signature, self.prefix) if self.resume else None
        if path is not None:
            load = dict(objects)
            saved_keys = set(torch.load(path, map_location="cpu", weights_only=True))
            if "best_metric" in load and "best_metric" not in saved_keys:
                load.pop("best_metric")
                logger.warning(
                    f"{path} holds no best validation score (written before it was saved): the first validation "
                    "after resuming replaces the best model."
                )
            for name in [k for k, v in load.items() if k not in saved_keys and isinstance(v, EMAWeights)]:
                load.pop(name)  # EMA turned on for a run whose checkpoint was written without it
                logger.warning(f"{path} holds no '{name}' state: the EMA restarts from the resumed weights.")
            CheckpointLoader(load_path=path, load_dict=load, map_location=self.map_location).attach(engine)
        engine.add_event_handler(Events.STARTED, self._started)
        if idist.get_rank() != 0:
            return
        # atomic writes: a run killed while saving keeps the previous checkpoint intact
        self._saver = AtomicCheckpointSaver(
            save_dir=self.ckpt_dir, save_dict=objects, file_prefix=self.prefix, save_interval=1, n_saved=1,
            epoch_level=True,
        )
        # attached when the run starts, after every other handler: the epoch's checkpoint is written after the
        # epoch's validation, so it holds that validation's best score
        engine.add_event_handler(Events.STARTED, self._attach_saver)

    def _attach_saver(self, engine: Engine) -> None:
        if self._saver is not None and not self._saver_attached:
            self._saver.attach(engine)
            self._saver_attached = True

    def _started(self, engine: Engine) -> None:
        if engine.state.epoch >= (engine.state.max_epochs or 0):
            logger.warning(
                f"training is already complete ({engine.state.epoch}/{engine.state.max_epochs} epochs); "
                "pass --resume false to train again from scratch."
            )
        if idist.get_rank() == 0:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            with open(os.path.join(self.ckpt_dir, SIGNATURE_FILE), "w") as f:
                json.dump(json.loads(json.dumps(self.signature, default=str)), f, indent=2)
