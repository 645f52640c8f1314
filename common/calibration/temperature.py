"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T > 0`` per classification output, fitted on the
validation split by minimising the negative log-likelihood of ``logits / T``. It softens or sharpens the outputs but
cannot remove a shift of the logits (see :mod:`common.calibration.platt`); it is the method for softmax outputs."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

__all__ = ["ACTIVATIONS", "TEMPERATURE_RANGE", "fit_temperature", "negative_log_likelihood"]

#: The logit -> probability transforms a temperature is fitted for.
ACTIVATIONS = ("sigmoid", "softmax")
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
