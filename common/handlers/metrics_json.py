"""Writes an evaluator's metrics to ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

from ignite.engine import Engine, Events

__all__ = ["MetricsJSONWriter"]

logger = logging.getLogger(__name__)


class MetricsJSONWriter:
    """On completion, writes the engine's numeric metrics as one flat JSON object.

    NaN (e.g. an AUC on a set with one class) is written as ``null``.

    Args:
        output_dir: folder of the file (created).
        filename: file name.
        keys: metric names to write (default: every numeric metric); each must have been computed.
        optional_keys: further metric names written when computed (e.g. the uncalibrated ECE, only with a
            calibration file).
    """

    def __init__(
        self,
        output_dir: str,
        filename: str = "metrics.json",
        keys: Sequence[str] | None = None,
        optional_keys: Sequence[str] = (),
    ) -> None:
        self.output_dir, self.filename = str(output_dir), filename
        self.keys = list(keys) if keys is not None else None
        self.optional_keys = list(optional_keys)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        keys = self.keys if self.keys is not None else sorted(metrics)
        keys = keys + [k for k in self.optional_keys if k in metrics and k not in keys]
        out = {}
        for k in keys:
            if k not in metrics:
                raise ValueError(f"metric '{k}' was not computed; computed: {sorted(metrics)}.")
            v = metrics[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        logger.info(f"metrics written to {path}: {json.dumps(out)}")
