"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T > 0`` per classification output, fitted on the
validation split by minimising the negative log-likelihood of ``logits / T``, and the file that keeps it beside the
model (``models/calibration.json``).

The file::

    {"model_file": "model.pt", "model_sha256": "<hash of the model the temperatures were fitted for>",
     "outputs": {"<output>": {"temperature": 1.7, "activation": "sigmoid", "n": 40,
                              "nll_before": ..., "nll_after": ..., "ece_before": ..., "ece_after": ...}}}

:func:`read_temperatures` checks it against the outputs a workflow knows and the model it loads, and raises a
:class:`~common.errors.SettingsError` naming the file and the key at fault.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from ..errors import SettingsError

__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_FILE",
    "TEMPERATURE_RANGE",
    "fit_temperature",
    "file_sha256",
    "negative_log_likelihood",
    "read_temperatures",
    "write_calibration",
]

#: The logit -> probability transforms a temperature is fitted for.
ACTIVATIONS = ("sigmoid", "softmax")
#: The file name of the temperatures beside the model.
CALIBRATION_FILE = "calibration.json"
#: Search range of the temperature (searched over log T); the fitted value is clipped to it.
TEMPERATURE_RANGE = (0.05, 20.0)
_T_MIN, _T_MAX = TEMPERATURE_RANGE


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
    return activation


def negative_log_likelihood(
    logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, activation: str = "sigmoid",
    temperature: float = 1.0,
) -> float:
    """Mean NLL of ``logits / temperature``: binary cross-entropy against 0/1 labels (``sigmoid``, logits ``(N,)``)
    or cross-entropy against class indices (``softmax``, logits ``(N, C)``)."""
    _check_activation(activation)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if activation == "sigmoid":
        return float(F.binary_cross_entropy_with_logits(z.reshape(-1), (y.reshape(-1) > 0.5).double()))
    return float(F.cross_entropy(z.reshape(len(y.reshape(-1)), -1), y.reshape(-1).long()))


def fit_temperature(
    logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, activation: str = "sigmoid"
) -> float:
    """The temperature ``T`` in [0.05, 20] minimising :func:`negative_log_likelihood` of ``logits / T`` (bounded
    scalar search over ``log T``). ``T > 1`` softens over-confident outputs, ``T < 1`` sharpens under-confident ones.

    Raises:
        ValueError: no samples, or logits and labels of different lengths.
    """
    _check_activation(activation)
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("logits must hold at least one sample.")
    if (z.size if activation == "sigmoid" else z.shape[0]) != y.size:
        raise ValueError(f"logits and labels must have the same number of samples, got {z.shape} and {y.size}.")
    res = minimize_scalar(
        lambda log_t: negative_log_likelihood(z, y, activation, math.exp(log_t)),
        bounds=(math.log(_T_MIN), math.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(min(max(math.exp(res.x), _T_MIN), _T_MAX))


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (which model a calibration file belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_calibration(path: str, outputs: Mapping[str, Mapping[str, Any]], model_file: str) -> str:
    """Write the calibration file ``path`` (atomically) for the model ``model_file``; ``outputs``: output name ->
    ``{"temperature": T, ...}`` (further numbers are kept as they are). Returns ``path``."""
    for name, entry in outputs.items():
        t = entry.get("temperature")
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"outputs['{name}']['temperature'] must be a positive number, got {t!r}.")
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


def read_temperatures(path: str, outputs: Sequence[str], model_file: str | None = None) -> dict[str, float]:
    """The temperatures of the calibration file ``path``: output name -> T; ``{}`` when there is no file.

    Args:
        path: the calibration file.
        outputs: the classification outputs of the workflow; every output of the file must be one of them.
        model_file: the model the workflow loads; when given, it must be the one the file was fitted for.

    Raises:
        SettingsError: the file cannot be read, names an unknown output, holds a temperature that is not a positive
            number, or belongs to another model. The message names the file and the key.
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
        raise SettingsError(f"{path}: key 'outputs' must be an object of output name -> temperature; "
                            "run calibrate.json again or delete the file.")
    known = list(outputs)
    temperatures = {}
    for name, entry in entries.items():
        if name not in known:
            raise SettingsError(
                f"{path}: key 'outputs.{name}' is not a classification output of this workflow (known: {known}); "
                "run calibrate.json again or delete the file."
            )
        t = entry.get("temperature") if isinstance(entry, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise SettingsError(
                f"{path}: key 'outputs.{name}.temperature' must be a positive number, got {t!r}; "
                "run calibrate.json again or delete the file."
            )
        temperatures[name] = float(t)
    if model_file is not None and os.path.isfile(model_file):
        recorded = doc.get("model_sha256")
        if recorded != file_sha256(model_file):
            raise SettingsError(
                f"{path}: key 'model_sha256' names another model than {model_file} (the model was trained again "
                "after calibration); run calibrate.json again or delete the file."
            )
    return temperatures
