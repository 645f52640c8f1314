"""Platt scaling (Platt 1999): ``p = sigmoid(a * logit + b)`` per binary output, ``a > 0`` and ``b`` fitted on the
validation split by minimising the negative log-likelihood. Unlike temperature scaling (``b = 0``), the bias removes
a shift of every logit, such as the ``log(pos_weight)`` a class-balanced BCE adds.

As in Platt's paper, the 0/1 labels are replaced by the targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``: on a
large split this changes nothing, on a small or separable one it keeps ``a`` and ``b`` finite instead of driving
the probabilities to exactly 0 and 1."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

__all__ = ["PLATT_BIAS_RANGE", "PLATT_SCALE_RANGE", "fit_platt"]

#: Bounds of the scale ``a`` (kept positive: a negative scale would invert the ranking of the outputs).
PLATT_SCALE_RANGE = (1e-3, 100.0)
#: Bounds of the bias ``b`` (a shift of 20 in logit already maps p = 0.5 to 1 - 2e-9).
PLATT_BIAS_RANGE = (-20.0, 20.0)


def _nll_and_gradient(params: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of ``sigmoid(a z + b)`` against targets ``y`` in [0, 1] and its gradient in
    ``(a, b)``."""
    a, b = params
    s = a * z + b
    nll = float(np.mean(np.logaddexp(0.0, s) - y * s))  # softplus(s) - y s, stable for large |s|
    residual = torch.sigmoid(torch.as_tensor(s)).numpy() - y
    return nll, np.array([np.mean(residual * z), np.mean(residual)])


def fit_platt(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The scale ``a`` in :data:`PLATT_SCALE_RANGE` and bias ``b`` in :data:`PLATT_BIAS_RANGE` minimising the mean
    NLL of ``sigmoid(a * logit + b)`` against Platt's targets for the 0/1 labels (module docstring; bounded L-BFGS
    from ``a = 1, b = 0``). Binary (sigmoid) outputs only: logits ``(N,)``.

    Raises:
        ValueError: no samples, or logits and labels of different lengths.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = (np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5).astype(np.float64)
    if y.size == 0:
        raise ValueError("logits must hold at least one sample.")
    if z.size != y.size:
        raise ValueError(f"logits and labels must have the same number of samples, got {z.size} and {y.size}.")
    n_pos = float(y.sum())
    targets = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (y.size - n_pos + 2))
    res = minimize(
        _nll_and_gradient, np.array([1.0, 0.0]), args=(z, targets), jac=True, method="L-BFGS-B",
        bounds=[PLATT_SCALE_RANGE, PLATT_BIAS_RANGE], options={"ftol": 1e-12, "gtol": 1e-8},
    )
    a = float(np.clip(res.x[0], *PLATT_SCALE_RANGE))
    b = float(np.clip(res.x[1], *PLATT_BIAS_RANGE))
    return a, b
