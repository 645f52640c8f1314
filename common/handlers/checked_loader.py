"""Loading a trained model for evaluation or inference only when it was trained with the same settings."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from ..errors import SettingsError
from .atomic_checkpoint import settings_path

__all__ = ["CheckedCheckpointLoader", "check_model_settings", "read_training_json"]

logger = logging.getLogger(__name__)


class ModelNotFoundError(SettingsError, FileNotFoundError):
    """No trained model where evaluation or inference needs one."""


def _train_first(path: str, train_config: str | None) -> ModelNotFoundError:
    cfg = train_config or "<bundle>/configs/train.json"
    return ModelNotFoundError(
        f"no trained model at {path}: train first with python -m monai.bundle run --config_file {cfg} "
        "(with the same --bundle_root/--ckpt_dir and model settings as this run)."
    )


def read_training_json(path: str, train_config: str | None = None) -> Any:
    """Read a JSON file that training writes beside the model (e.g. a fitted score model); when it is missing,
    say to train first (see :func:`check_model_settings`)."""
    if not os.path.isfile(path):
        raise _train_first(str(path), train_config)
    with open(path) as f:
        return json.load(f)


def check_model_settings(
    load_path: str,
    settings: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    train_config: str | None = None,
) -> dict[str, Any] | None:
    """Check that a trained model exists and was trained with ``settings``; warn about untrained ``tasks``.

    The settings are those the training run recorded beside the model (``model_settings.json``, see
    :class:`~common.handlers.AtomicCheckpointSaver` ``settings``); a model without that file is not checked.

    Args:
        load_path: the model file (``models/model.pt``).
        settings: the settings this workflow builds its network with; each one recorded too must be equal.
        tasks: the tasks this workflow reports; a task missing from the recorded ``trained_tasks`` gets a warning.
        train_config: the training config named in the "train first" message.

    Returns:
        the recorded settings, or None when there are none.

    Raises:
        FileNotFoundError: no model at ``load_path``.
        ValueError: a setting differs from the recorded one (the message names it and both values).
    """
    if not os.path.isfile(load_path):
        raise _train_first(load_path, train_config)
    sidecar = settings_path(load_path)
    try:
        with open(sidecar) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        logger.warning(f"{load_path} has no {os.path.basename(sidecar)}: its training settings are not checked.")
        return None
    except (OSError, ValueError) as err:
        raise SettingsError(f"{sidecar} cannot be read ({err}); train again or delete it to skip the check.") from err
    current = json.loads(json.dumps(dict(settings or {}), default=str))
    differ = [k for k in current if k in recorded and recorded[k] != current[k]]
    if differ:
        lines = "; ".join(f"{k}: model {recorded[k]!r}, this run {current[k]!r}" for k in differ)
        raise SettingsError(
            f"the model {load_path} was trained with other settings than this run ({lines}); pass the model's "
            f"values (e.g. --{differ[0]} '{json.dumps(recorded[differ[0]])}') or train a model with these settings."
        )
    trained = recorded.get("trained_tasks")
    if trained is not None and tasks:
        untrained = [t for t in tasks if t not in trained]
        if untrained:
            logger.warning(
                f"the model {load_path} never trained task(s) {untrained} (strategy "
                f"{recorded.get('strategy', '?')!r} trained {trained}): their outputs and metrics come from "
                "untrained heads and mean nothing."
            )
    return recorded


class CheckedCheckpointLoader(CheckpointLoader):
    """``monai.handlers.CheckpointLoader`` that runs :func:`check_model_settings` before loading (when the engine
    starts).

    Args:
        load_path: the model file.
        load_dict: name -> object to load, as for ``CheckpointLoader``.
        settings, tasks, train_config: see :func:`check_model_settings`.
        kwargs: the other arguments of ``CheckpointLoader``.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        settings: Mapping[str, Any] | None = None,
        tasks: Sequence[str] | None = None,
        train_config: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)
        self.settings, self.tasks, self.train_config = settings, tasks, train_config

    def __call__(self, engine: Engine) -> None:
        check_model_settings(self.load_path, self.settings, self.tasks, self.train_config)
        super().__call__(engine)
