"""Fitting the calibration (temperature or Platt scaling) of every classification output on an evaluator's run (the
validation split) and writing it beside the model."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from ..calibration import (
    ACTIVATIONS,
    METHODS,
    PLATT_BIAS_RANGE,
    PLATT_SCALE_RANGE,
    TEMPERATURE_RANGE,
    LogitCalibration,
    fit_platt,
    fit_temperature,
    negative_log_likelihood,
    write_calibration,
)
from ..errors import DatasetError, SettingsError
from ..metrics.calibration import expected_calibration_error

__all__ = ["CalibrationFitter"]

logger = logging.getLogger(__name__)


def _probabilities(logits: np.ndarray, labels: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and 0/1 outcomes the ECE is taken of: the positive class (sigmoid), the predicted class's
    confidence and whether it is right (softmax)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    if activation == "sigmoid":
        return torch.sigmoid(z).numpy(), labels > 0.5
    conf, pred = torch.softmax(z, dim=1).max(dim=1)
    return conf.numpy(), pred.numpy() == labels.astype(np.int64)


def _at_bound(value: float, bounds: tuple[float, float]) -> bool:
    low, high = bounds
    return not low + 1e-3 * abs(low) < value < high - 1e-3 * abs(high)


class CalibrationFitter:
    """Collects the logits and labels of each classification output over a run; when it completes, fits one
    calibration per output, logs the NLL and ECE before and after, and writes the calibration file
    (:func:`common.calibration.write_calibration`).

    Methods: ``"temperature"`` (:func:`common.calibration.fit_temperature`: ``logit / T``; sigmoid and softmax
    outputs; softens or sharpens) and ``"platt"`` (:func:`common.calibration.fit_platt`: ``a * logit + b``; sigmoid
    outputs only; also removes a shift of the logits, e.g. the ``log(pos_weight)`` of class-balanced BCE).

    Args:
        outputs: one entry per classification output: ``name`` (key in the prediction dict), ``label_key`` (key in
            the targets dict), optional ``label_index`` (column of a ``(B, K)`` target), ``activation``
            (``"sigmoid"``: binary, logits ``(B,)``/``(B, 1)``; ``"softmax"``: logits ``(B, C)``, class-index labels;
            default sigmoid).
        calibration_file: the file to write (``models/calibration.json``).
        model_file: the model the calibration belongs to (its hash is recorded).
        missing_value: label value meaning "unknown" (skipped, as are non-finite labels and logits).
        method: the calibration method of every output (``calibration_method`` of ``calibrate.json``).

    Raises:
        SettingsError: an unknown method, or ``"platt"`` with a softmax output.
    """

    def __init__(
        self,
        outputs: Sequence[Mapping[str, Any]],
        calibration_file: str,
        model_file: str,
        missing_value: float = -1,
        method: str = "temperature",
    ) -> None:
        if method not in METHODS:
            raise SettingsError(f"calibration_method must be one of {METHODS}, got {method!r}.")
        if not outputs:
            raise ValueError("outputs must name at least one classification output.")
        self.outputs = []
        for i, o in enumerate(outputs):
            if not isinstance(o, Mapping) or "name" not in o or "label_key" not in o:
                raise ValueError(f"outputs[{i}] must be a mapping with 'name' and 'label_key', got {o!r}.")
            activation = o.get("activation", "sigmoid")
            if activation not in ACTIVATIONS:
                raise ValueError(f"outputs[{i}]['activation'] must be one of {ACTIVATIONS}, got {activation!r}.")
            if method == "platt" and activation != "sigmoid":
                raise SettingsError(
                    f"calibration_method 'platt' fits binary (sigmoid) outputs, but output '{o['name']}' is "
                    f"{activation}; use calibration_method 'temperature' for softmax outputs."
                )
            self.outputs.append({"label_index": None, **o, "activation": activation})
        self.method = method
        self.calibration_file, self.model_file, self.missing_value = calibration_file, model_file, missing_value
        self.results: dict[str, dict[str, Any]] = {}
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._fit)

    def _reset(self, engine: Engine | None) -> None:
        self._logits: dict[str, list[np.ndarray]] = {o["name"]: [] for o in self.outputs}
        self._labels: dict[str, list[np.ndarray]] = {o["name"]: [] for o in self.outputs}

    def _collect(self, engine: Engine) -> None:
        preds, targets = engine.state.output[Keys.PRED], engine.state.output[Keys.LABEL]
        for o in self.outputs:
            name = o["name"]
            if name not in preds:
                raise ValueError(f"the predictions hold no output '{name}' (outputs: {sorted(preds)}).")
            if o["label_key"] not in targets:
                raise ValueError(f"the targets hold no labels '{o['label_key']}' (targets: {sorted(targets)}).")
            z = preds[name].detach().double().cpu()
            y = torch.as_tensor(targets[o["label_key"]]).detach().double().cpu()
            if o["label_index"] is not None:
                y = y[:, int(o["label_index"])]
            y = y.reshape(-1)
            z = z.reshape(len(y)) if o["activation"] == "sigmoid" else z.reshape(len(y), -1)
            known = (y != self.missing_value) & torch.isfinite(y)
            known &= torch.isfinite(z) if z.ndim == 1 else torch.isfinite(z).all(dim=1)
            self._logits[name].append(z[known].numpy())
            self._labels[name].append(y[known].numpy())

    def _fit(self, engine: Engine) -> None:
        for o in self.outputs:
            name, activation = o["name"], o["activation"]
            z = np.concatenate(self._logits[name]) if self._logits[name] else np.zeros(0)
            y = np.concatenate(self._labels[name]) if self._labels[name] else np.zeros(0)
            if y.size == 0:
                raise DatasetError(
                    f"no labelled samples of output '{name}' (labels '{o['label_key']}') in the calibration split: "
                    "a calibration cannot be fitted; calibrate on a split with labels (--calibration_split)."
                )
            if activation == "sigmoid" and len(np.unique(y > 0.5)) < 2:
                logger.warning(f"output '{name}': the calibration split holds one class only; its calibration "
                               "only moves the outputs towards it and means little.")
            calibration = self._fit_one(name, z, y, activation)
            zs = calibration(torch.as_tensor(z, dtype=torch.float64)).numpy()
            ece = [expected_calibration_error(*_probabilities(s, y, activation)) for s in (z, zs)]
            nll = [negative_log_likelihood(s, y, activation) for s in (z, zs)]
            self.results[name] = {
                **calibration.entry(), "activation": activation, "n": int(y.size),
                "nll_before": nll[0], "nll_after": nll[1], "ece_before": ece[0], "ece_after": ece[1],
            }
            logger.info(
                f"calibration of '{name}' on {y.size} samples: {calibration}, NLL {nll[0]:.4f} -> {nll[1]:.4f}, "
                f"ECE {ece[0]:.4f} -> {ece[1]:.4f}"
            )
        clean = {k: {m: (None if isinstance(v, float) and not math.isfinite(v) else v) for m, v in r.items()}
                 for k, r in self.results.items()}
        path = write_calibration(self.calibration_file, clean, self.model_file)
        logger.info(f"calibration ({self.method}) written to {path}")

    def _fit_one(self, name: str, z: np.ndarray, y: np.ndarray, activation: str) -> LogitCalibration:
        """Fit one output with the fitter's method; warns when a parameter ends at its bound."""
        if self.method == "temperature":
            t = fit_temperature(z, y, activation)
            if _at_bound(t, TEMPERATURE_RANGE):
                logger.warning(f"output '{name}': the fitted temperature {t:.4g} is at the end of the search range "
                               f"{TEMPERATURE_RANGE} (too few or one-class samples?); check it before using it.")
            return LogitCalibration("temperature", temperature=t)
        a, b = fit_platt(z, y)
        if _at_bound(a, PLATT_SCALE_RANGE) or _at_bound(b, PLATT_BIAS_RANGE):
            logger.warning(f"output '{name}': the fitted Platt scale {a:.4g} or bias {b:.4g} is at the end of its "
                           f"range {PLATT_SCALE_RANGE}, {PLATT_BIAS_RANGE} (too few or one-class samples?); check "
                           "it before using it.")
        return LogitCalibration("platt", scale=a, bias=b)

