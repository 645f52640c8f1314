"""One classification output's fitted calibration (:class:`LogitCalibration`) and the file that keeps them beside the
model (``models/calibration.json``).

The file::

    {"model_file": "model.pt", "model_sha256": "<hash of the model the calibration was fitted for>",
     "outputs": {"<output>": {"method": "temperature", "temperature": 1.7, "activation": "sigmoid", "n": 40,
                              "nll_before": ..., "nll_after": ..., "ece_before": ..., "ece_after": ...},
                 "<output>": {"method": "platt", "scale": 0.9, "bias": -1.4, "activation": "sigmoid", ...}}}

An entry without ``method`` is a temperature (files written before Platt scaling). :func:`read_calibration` checks
the file against the outputs a workflow knows and the model it loads, and raises a
:class:`~common.errors.SettingsError` naming the file and the key at fault.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SettingsError

__all__ = ["CALIBRATION_FILE", "METHODS", "LogitCalibration", "file_sha256", "read_calibration", "write_calibration"]

#: The file name of the calibration beside the model.
CALIBRATION_FILE = "calibration.json"
#: The calibration methods: ``temperature`` (logit / T; sigmoid or softmax) and ``platt`` (a * logit + b; sigmoid).
METHODS = ("temperature", "platt")


class _EntryError(ValueError):
    """A bad value in one output's entry; ``key`` is its key inside the entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _number(entry: Mapping[str, Any], key: str, positive: bool) -> float:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise _EntryError(key, f"must be a {'positive' if positive else 'finite'} number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class LogitCalibration:
    """The transform of one output's logits: ``logits / temperature`` (``temperature``) or
    ``logits * scale + bias`` (``platt``); the activation taken of the result gives the calibrated probability."""

    method: str = "temperature"
    temperature: float = 1.0
    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        for key, positive in (("temperature", True), ("scale", True), ("bias", False)):
            v = getattr(self, key)
            if not math.isfinite(v) or (positive and v <= 0):
                raise ValueError(f"{key} must be a {'positive' if positive else 'finite'} number, got {v!r}.")

    @classmethod
    def from_entry(cls, entry: Any) -> LogitCalibration:
        """The calibration of a file entry (see the module docstring).

        Raises:
            ValueError: (with ``key``: the entry's key at fault) unknown method or a bad number.
        """
        if not isinstance(entry, Mapping):
            raise _EntryError("temperature", f"must be an object with 'temperature' or 'method', got {entry!r}")
        method = entry.get("method", "temperature")
        if method not in METHODS:
            raise _EntryError("method", f"must be one of {METHODS}, got {method!r}")
        if method == "temperature":
            return cls("temperature", temperature=_number(entry, "temperature", positive=True))
        if entry.get("activation", "sigmoid") != "sigmoid":
            raise _EntryError("method", f"'platt' is for sigmoid outputs, the entry's activation is "
                                        f"{entry.get('activation')!r}")
        return cls("platt", scale=_number(entry, "scale", positive=True), bias=_number(entry, "bias", positive=False))

    def entry(self) -> dict[str, Any]:
        """The file entry's parameters: ``{"method", "temperature"}`` or ``{"method", "scale", "bias"}``."""
        if self.method == "temperature":
            return {"method": "temperature", "temperature": self.temperature}
        return {"method": "platt", "scale": self.scale, "bias": self.bias}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.method == "temperature":
            return logits / self.temperature
        return logits * self.scale + self.bias

    def __str__(self) -> str:
        if self.method == "temperature":
            return f"temperature {self.temperature:.4f}"
        return f"platt scale {self.scale:.4f} bias {self.bias:+.4f}"


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (which model a calibration file belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_calibration(path: str, outputs: Mapping[str, Mapping[str, Any]], model_file: str) -> str:
    """Write the calibration file ``path`` (atomically) for the model ``model_file``; ``outputs``: output name ->
    entry (``{"temperature": T, ...}`` or ``{"method": "platt", "scale": a, "bias": b, ...}``; further numbers are
    kept as they are). Returns ``path``.

    Raises:
        ValueError: an entry that :meth:`LogitCalibration.from_entry` refuses.
    """
    for name, entry in outputs.items():
        try:
            LogitCalibration.from_entry(entry)
        except _EntryError as err:
            raise ValueError(f"outputs['{name}']['{err.key}'] {err}.") from err
    doc = {
        "model_file": os.path.basename(model_file),
        "model_sha256": file_sha256(model_file),
        "outputs": {k: dict(v) for k, v in outputs.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)
    return path


def read_calibration(path: str, outputs: Sequence[str], model_file: str | None = None) -> dict[str, LogitCalibration]:
    """The calibration of each output in the file ``path``: output name -> :class:`LogitCalibration`; ``{}`` when
    there is no file.

    Args:
        path: the calibration file.
        outputs: the classification outputs of the workflow; every output of the file must be one of them.
        model_file: the model the workflow loads; when given, it must be the one the file was fitted for.

    Raises:
        SettingsError: the file cannot be read, names an unknown output or method, holds a temperature or Platt
            scale that is not a positive number or a Platt bias that is not finite, or belongs to another model.
            The message names the file and the key.
    """
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise SettingsError(f"{path} cannot be read ({err}); run calibrate.json again or delete it.") from err
    entries = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise SettingsError(f"{path}: key 'outputs' must be an object of output name -> calibration; "
                            "run calibrate.json again or delete the file.")
    known = list(outputs)
    calibrations = {}
    for name, entry in entries.items():
        if name not in known:
            raise SettingsError(
                f"{path}: key 'outputs.{name}' is not a classification output of this workflow (known: {known}); "
                "run calibrate.json again or delete the file."
            )
        try:
            calibrations[name] = LogitCalibration.from_entry(entry)
        except _EntryError as err:
            raise SettingsError(
                f"{path}: key 'outputs.{name}.{err.key}' {err}; run calibrate.json again or delete the file."
            ) from err
    if model_file is not None and os.path.isfile(model_file):
        recorded = doc.get("model_sha256")
        if recorded != file_sha256(model_file):
            raise SettingsError(
                f"{path}: key 'model_sha256' names another model than {model_file} (the model was trained again "
                "after calibration); run calibrate.json again or delete the file."
            )
    return calibrations
