"""Post-hoc calibration of classification outputs fitted on the validation split: temperature scaling (logit / T)
and Platt scaling (a * logit + b, binary outputs), and the file that keeps them beside the model."""

from __future__ import annotations

from .calibration_file import (
    CALIBRATION_FILE,
    METHODS,
    LogitCalibration,
    file_sha256,
    read_calibration,
    write_calibration,
)
from .platt import PLATT_BIAS_RANGE, PLATT_SCALE_RANGE, fit_platt
from .temperature import ACTIVATIONS, TEMPERATURE_RANGE, fit_temperature, negative_log_likelihood

__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_FILE",
    "METHODS",
    "PLATT_BIAS_RANGE",
    "PLATT_SCALE_RANGE",
    "TEMPERATURE_RANGE",
    "LogitCalibration",
    "file_sha256",
    "fit_platt",
    "fit_temperature",
    "negative_log_likelihood",
    "read_calibration",
    "write_calibration",
]
