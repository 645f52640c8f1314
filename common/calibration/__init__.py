"""Post-hoc calibration of classification outputs: temperature scaling fitted on the validation split and the file
that keeps the temperatures beside the model."""

from __future__ import annotations

from .temperature import (
    ACTIVATIONS,
    CALIBRATION_FILE,
    TEMPERATURE_RANGE,
    file_sha256,
    fit_temperature,
    negative_log_likelihood,
    read_temperatures,
    write_calibration,
)

__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_FILE",
    "TEMPERATURE_RANGE",
    "file_sha256",
    "fit_temperature",
    "negative_log_likelihood",
    "read_temperatures",
    "write_calibration",
]
