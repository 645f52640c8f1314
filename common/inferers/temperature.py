"""An inferer that divides the logits of a network's classification outputs by their fitted temperatures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from ..calibration import read_temperatures
from ..metrics.calibration import UNCALIBRATED_SUFFIX

__all__ = ["TemperatureScaledInferer"]

logger = logging.getLogger(__name__)


class TemperatureScaledInferer(Inferer):
    """Runs ``inferer`` and divides each classification output of its prediction dict by its temperature from
    ``calibration_file`` (see :mod:`common.calibration`), so that every probability taken from the predictions
    (metrics, prediction tables, DICOM SR, MONAI Label answers) is calibrated. Without the file, the predictions are
    left as they are.

    The file is read on the first call and checked then (a :class:`~common.errors.SettingsError` names the file and
    the key at fault). With ``keep_uncalibrated``, the logits before scaling are kept as ``<output>_uncalibrated``
    (the metrics report their ECE and Brier score too).

    Args:
        inferer: the inferer of the workflow (returns a dict of output name -> logits).
        calibration_file: the temperatures (``models/calibration.json``).
        outputs: the classification outputs a temperature may be given for.
        model_file: the model the workflow loads (the file must have been fitted for it); None: not checked.
        keep_uncalibrated: also return the logits before scaling.
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
        self._temperatures: dict[str, float] | None = None

    @property
    def temperatures(self) -> dict[str, float]:
        """Output name -> temperature (read from the file on first use; ``{}`` without the file)."""
        if self._temperatures is None:
            self._temperatures = read_temperatures(self.calibration_file, self.outputs, self.model_file)
            if self._temperatures:
                logger.info(f"temperature scaling from {self.calibration_file}: {self._temperatures}")
        return self._temperatures

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped inferer (e.g. its locator) stay reachable
        if name == "inferer":
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = self.inferer(inputs, network, *args, **kwargs)
        temperatures = self.temperatures
        if not temperatures or not isinstance(out, dict):
            return out
        out = dict(out)
        for name, t in temperatures.items():
            if name in out:
                if self.keep_uncalibrated:
                    out[f"{name}{UNCALIBRATED_SUFFIX}"] = out[name]
                out[name] = out[name] / t
        return out
