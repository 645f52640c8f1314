"""An inferer that applies the fitted calibration (temperature or Platt scaling) to the logits of a network's
classification outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from ..calibration import LogitCalibration, read_calibration
from ..metrics.calibration import UNCALIBRATED_SUFFIX

__all__ = ["CalibratedInferer"]

logger = logging.getLogger(__name__)


class CalibratedInferer(Inferer):
    """Runs ``inferer`` and transforms each classification output of its prediction dict by its calibration from
    ``calibration_file`` (see :mod:`common.calibration`): ``logit / T`` (temperature) or ``a * logit + b`` (Platt),
    so that every probability taken from the predictions (metrics, prediction tables, DICOM SR, MONAI Label answers)
    is calibrated. Without the file, the predictions are left as they are.

    The file is read on the first call and checked then (a :class:`~common.errors.SettingsError` names the file and
    the key at fault). With ``keep_uncalibrated``, the logits before calibration are kept as
    ``<output>_uncalibrated`` (the metrics report their ECE and Brier score too).

    Args:
        inferer: the inferer of the workflow (returns a dict of output name -> logits).
        calibration_file: the fitted calibration (``models/calibration.json``).
        outputs: the classification outputs a calibration may be given for.
        model_file: the model the workflow loads (the file must have been fitted for it); None: not checked.
        keep_uncalibrated: also return the logits before calibration.
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., Any],
        calibration_file: str,
        outputs: Sequence[str],
        model_file: str | None = None,
        keep_uncalibrated: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(outputs, str):
            raise ValueError(f"outputs must be a sequence of output names, got the string {outputs!r}.")
        self.inferer, self.calibration_file, self.outputs = inferer, str(calibration_file), list(outputs)
        self.model_file, self.keep_uncalibrated = model_file, keep_uncalibrated
        self._calibrations: dict[str, LogitCalibration] | None = None

    @property
    def calibrations(self) -> dict[str, LogitCalibration]:
        """Output name -> its calibration (read from the file on first use; ``{}`` without the file)."""
        if self._calibrations is None:
            self._calibrations = read_calibration(self.calibration_file, self.outputs, self.model_file)
            if self._calibrations:
                summary = {k: str(v) for k, v in self._calibrations.items()}
                logger.info(f"calibration from {self.calibration_file}: {summary}")
        return self._calibrations

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped inferer (e.g. its locator) stay reachable
        if name == "inferer":
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = self.inferer(inputs, network, *args, **kwargs)
        calibrations = self.calibrations
        if not calibrations or not isinstance(out, dict):
            return out
        out = dict(out)
        for name, calibration in calibrations.items():
            if name in out:
                if self.keep_uncalibrated:
                    out[f"{name}{UNCALIBRATED_SUFFIX}"] = out[name]
                out[name] = calibration(out[name])
        return out

