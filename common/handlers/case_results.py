"""The prediction hand-over: what a bundle's prediction writer found for each case, passed on in memory.

A prediction writer (a subclass of :class:`PredictionWriter`) writes its files for people (NIfTI, PNG, CSV, JSON)
and, for every finished case, appends a :class:`CaseResult` to ``engine.state.case_results``, as MONAI handlers
pass metrics through ``engine.state``. Handlers attached after it (DICOM SEG/SR, PACS export) and the MONAI Label
infer task read those results; none of them knows which bundle or task produced them, so a new bundle made of
configs gets DICOM output, PACS export and MONAI Label serving with its own segment and measurement names.

``engine.state.case_results`` holds the results finished during the current iteration (a per-case writer) or, at
``Events.COMPLETED``, those finished at the end of the run (a writer that aggregates over iterations, e.g. the
slices of a volume); it is emptied when the next iteration starts, so whole-volume masks do not pile up in memory.
Consumers handle both events and remember which cases they have handled (:class:`CaseResultConsumer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

__all__ = [
    "CaseResult",
    "CaseResultConsumer",
    "Measurement",
    "PredictionWriter",
    "collect_case_results",
    "label_map",
]

#: UCUM unit of a probability or any other dimensionless fraction.
UNITLESS = "1"


@dataclass(frozen=True)
class Measurement:
    """One number a bundle reports, with its unit.

    Args:
        value: the value; None or NaN when it could not be computed (e.g. a single-task model without that head).
        unit: the UCUM code of the unit where there is one (``"1"`` for probabilities, ``"mm3"``, ``"{ratio}"``,
            ``"a"`` for years), otherwise the unit as people write it (a DICOM writer then needs a code for it).
        description: optional words for people (e.g. ``"probability of the positive class 'mutant'"``).
    """

    value: float | None
    unit: str = UNITLESS
    description: str = ""

    @property
    def finite(self) -> bool:
        """Whether the value is a finite number."""
        return self.value is not None and math.isfinite(float(self.value))


@dataclass
class CaseResult:
    """What a bundle found for one case (an image, a volume or a study).

    Args:
        case: the case id (the name of its output folder).
        source: the DICOM source of the case (a series/study folder or one ``.dcm`` file), or None for NIfTI/PNG
            input.
        segments: segment names, in the order of ``masks``.
        masks: ``(n_segments, *spatial)`` boolean masks in the input image's space, or None: ``(n, X, Y, Z)`` for a
            volume (with ``affine``) or ``(n, H, W)`` for a 2-D image (rows first, as the source's pixels).
        affine: the 4x4 voxel-to-RAS affine of volume masks (MONAI/NIfTI convention); None for 2-D images.
        measurements: case-level findings by name (class probabilities, ratios, regression values).
        segment_measurements: per segment name, findings about that segment (e.g. its volume).
        image_measurements: per source image (its index in the volume's slice order), findings about that image.
        flags: warnings a reader must see (e.g. "disc not detected"); such a case's numbers are not trustworthy.
        details: other values for people and servers (predicted class names, pixel counts, intermediate
            probabilities), not coded into DICOM.
    """

    case: str
    source: str | None = None
    segments: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    affine: np.ndarray | None = None
    measurements: dict[str, Measurement] = field(default_factory=dict)
    segment_measurements: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    image_measurements: list[tuple[int, dict[str, Measurement]]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.masks is not None:
            masks = np.asarray(self.masks)
            if masks.ndim not in (3, 4) or masks.shape[0] != len(self.segments):
                raise ValueError(
                    f"case '{self.case}': masks must be (n_segments={len(self.segments)}, *spatial) with 2 or 3 "
                    f"spatial dims, got shape {masks.shape}."
                )
            if masks.ndim == 4 and self.affine is None:
                raise ValueError(f"case '{self.case}': volume masks need their affine.")
            self.masks = masks.astype(bool, copy=False)
        unknown = set(self.segment_measurements) - set(self.segments)
        if unknown:
            raise ValueError(f"case '{self.case}': segment_measurements name unknown segments {sorted(unknown)}.")

    def values(self) -> dict[str, float | None]:
        """Case-level measurement values by name (None where not finite)."""
        return {k: (float(m.value) if m.finite else None) for k, m in self.measurements.items()}


def label_map(masks: np.ndarray) -> np.ndarray:
    """One label image from ``(n, *spatial)`` masks: 0 background, ``k`` where the ``k``-th segment (from 1) is the
    last one holding the pixel (for nested segments listed outermost first: the innermost)."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros(masks.shape[1:], dtype=np.uint8 if masks.shape[0] < 256 else np.uint16)
    for k in range(masks.shape[0]):
        out[masks[k]] = k + 1
    return out


class PredictionWriter:
    """Base of the bundles' prediction writers: hands each finished case over in ``engine.state.case_results``.

    A subclass writes its files and calls :meth:`publish` with one :class:`CaseResult` per finished case. It
    declares what it reports, before any run, for servers that announce a model's outputs (MONAI Label):
    :attr:`segment_names` and :attr:`spatial_dims` (of its masks; 0 when it writes none).

    Args:
        case_key: batch key of the case ids.
        series_key: batch key of the DICOM source of each item (set by DICOM readers' datalists); absent for
            NIfTI/PNG input.
    """

    spatial_dims: int = 0

    def __init__(self, case_key: str = "case", series_key: str = "dicom_series") -> None:
        self.case_key, self.series_key = case_key, series_key

    @property
    def segment_names(self) -> list[str]:
        """Names of the segments this writer's results carry masks for (empty: no masks)."""
        return []

    def attach(self, engine: Engine) -> None:
        """Reset the hand-over at the start of the run and of each iteration (the subclass attaches its writing)."""
        engine.add_event_handler(Events.STARTED, self._clear)
        engine.add_event_handler(Events.ITERATION_STARTED, self._clear)

    @staticmethod
    def _clear(engine: Engine) -> None:
        engine.state.case_results = []

    def sources(self, batch: Mapping[str, Any], n: int) -> list[str | None]:
        """The DICOM source of each of the ``n`` items of ``batch`` (None where the input was not DICOM)."""
        series = batch.get(self.series_key) if isinstance(batch, Mapping) else None
        if series is None:
            return [None] * n
        values = list(series) if isinstance(series, (list, tuple)) else [series] * n
        return [str(v) if v else None for v in values][:n] + [None] * max(0, n - len(values))

    @staticmethod
    def publish(engine: Engine, result: CaseResult) -> None:
        """Hand ``result`` over to the handlers attached after this writer."""
        if not isinstance(getattr(engine.state, "case_results", None), list):
            engine.state.case_results = []
        engine.state.case_results.append(result)


class CaseResultConsumer:
    """Base of handlers that act on the hand-over: calls :meth:`consume` once per case, after the writer.

    Attach it after the prediction writer (handlers run in the order they are attached).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._take)
        engine.add_event_handler(Events.COMPLETED, self._take)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _start(self, engine: Engine) -> None:
        self._seen: set[str] = set()
        self.started(engine)

    def _take(self, engine: Engine) -> None:
        for result in list(getattr(engine.state, "case_results", None) or []):
            if result.case not in self._seen:
                self._seen.add(result.case)
                self.consume(engine, result)

    def started(self, engine: Engine) -> None:
        """Called when a run starts."""

    def consume(self, engine: Engine, result: CaseResult) -> None:
        """Act on one case's result."""
        raise NotImplementedError

    def completed(self, engine: Engine) -> None:
        """Called when the run completes, after every result was consumed."""


class _Collector(CaseResultConsumer):
    def __init__(self, into: dict[str, CaseResult]) -> None:
        self.into = into

    def consume(self, engine: Engine, result: CaseResult) -> None:
        self.into[result.case] = result


def collect_case_results(engine: Engine) -> dict[str, CaseResult]:
    """Attach a collector to ``engine`` (after its handlers) and return the dict it fills, case -> result."""
    found: dict[str, CaseResult] = {}
    _Collector(found).attach(engine)
    return found

