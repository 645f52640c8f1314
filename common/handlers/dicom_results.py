"""DICOM SEG + SR (+ Secondary Capture) of a bundle's inference results, for the cases whose input was DICOM.

:class:`DicomResultWriter`, attached to the inference evaluator after the bundle's prediction writer, takes each
case's :class:`~common.handlers.case_results.CaseResult` from ``engine.state.case_results`` (in memory) and, when
the case came from a DICOM source, writes ``<output_dir>/<case>/seg.dcm`` (when the result has masks),
``<output_dir>/<case>/sr.dcm`` and Secondary Capture images (``sc.dcm`` for a 2-D image, ``sc_<slice>.dcm`` for
key slices of a volume: the source with segment outlines and the numbers burned in, for any viewer) into the
source's study. The paths written go to ``engine.state.dicom_results``
(case -> list of files) for the PACS export attached after it. The codes of segments and measurements come from the
bundle config (``dicom_codes``, see :mod:`common.dicom.codes`), so nothing here knows a bundle or a task.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pydicom
from ignite.engine import Engine
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.dicom.codes import concept_key, measurement_code, measurement_codes, segment_code, segment_codes
from common.dicom.frames import mask_to_source_frames, sort_source_datasets
from common.dicom.sc import write_secondary_captures
from common.dicom.seg import write_segmentation
from common.dicom.sr import write_measurement_report
from common.errors import DatasetError

from .case_results import CaseResult, CaseResultConsumer, Measurement

__all__ = ["DicomResultWriter", "capture_text", "measurement_text", "read_dicom_source", "write_case_result"]

logger = logging.getLogger(__name__)

_NON_IMAGE_MODALITIES = ("SEG", "SR", "PR", "KO", "RTSTRUCT", "REG")


def read_dicom_source(path: str) -> list[Dataset]:
    """The images of a DICOM source: one ``.dcm`` file, or every DICOM image file of a series folder.

    Raises:
        DatasetError: no DICOM image there, or the folder holds several series.
    """
    files = [path] if os.path.isfile(path) else sorted(p for p in glob.glob(os.path.join(path, "**"), recursive=True))
    datasets = []
    for file in files:
        if not os.path.isfile(file):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)  # SEG and SR need the source's attributes only
        except (InvalidDicomError, OSError):
            continue
        if "Rows" in ds and str(ds.get("Modality", "")) not in _NON_IMAGE_MODALITIES:
            datasets.append(ds)
    if not datasets:
        raise DatasetError(f"DICOM source '{path}': no DICOM image found.")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise DatasetError(f"DICOM source '{path}': holds {len(series)} series ({sorted(series)}), expected one.")
    return datasets


def _finite(values: Mapping[str, Measurement]) -> dict[str, Measurement]:
    return {k: m for k, m in values.items() if m.finite}


def measurement_text(name: str, m: Measurement) -> str:
    """One measurement for people: ``"name (description): value unit"`` (``"not available"`` when not finite; no
    unit for a dimensionless ``"1"`` or a UCUM annotation such as ``"{ratio}"``)."""
    label = f"{name} ({m.description})" if m.description and m.description != name else name
    if not m.finite:
        return f"{label}: not available"
    value = float(m.value)  # type: ignore[arg-type]
    number = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    unit = "" if m.unit == "1" or (m.unit.startswith("{") and m.unit.endswith("}")) else f" {m.unit}"
    return f"{label}: {number}{unit}"


def capture_text(result: CaseResult, n_images: int) -> tuple[list[str], dict[int, list[str]]]:
    """The text lines of a case's Secondary Captures: case-level and per-segment measurements, and per-image
    measurements by image index (only when they fit the ``n_images`` source images)."""
    lines = [measurement_text(k, m) for k, m in result.measurements.items()]
    lines += [measurement_text(f"{s} {k}", m) for s, v in result.segment_measurements.items() for k, m in v.items()]
    per_image: dict[int, list[str]] = {}
    if result.image_measurements and max(k for k, _ in result.image_measurements) < n_images:
        for k, found in result.image_measurements:
            per_image.setdefault(int(k), []).extend(f"this image: {measurement_text(n, m)}" for n, m in found.items())
    return lines, per_image


def write_case_result(
    result: CaseResult,
    sources: list[Dataset],
    out_dir: str,
    algorithm_name: str,
    algorithm_version: str,
    codes: Mapping[str, Any] | None = None,
    secondary_capture: bool = False,
    capture_images: int = 5,
) -> dict[str, str]:
    """Write ``out_dir/seg.dcm`` (when ``result`` has masks), ``out_dir/sr.dcm`` (when it has a finite measurement)
    and, with ``secondary_capture``, Secondary Captures; return their paths by name (file name without ``.dcm``).

    Args:
        result: one case's hand-over from a prediction writer.
        sources: the case's DICOM source images.
        out_dir: output folder.
        algorithm_name, algorithm_version: the bundle's name and version.
        codes: the bundle config's ``dicom_codes`` (``{"segments": {...}, "measurements": {...}}``).
        secondary_capture: also write SC images (see :func:`common.dicom.sc.write_secondary_captures`).
        capture_images: most SC images of a volume (key slices).

    Raises:
        ValueError: a segment or measurement without codes (the message names the config key to add).
    """
    codes = codes or {}
    seg_table = segment_codes(codes.get("segments"))
    m_table = measurement_codes(codes.get("measurements"))
    paths: dict[str, str] = {}
    seg = None
    if result.masks is not None and result.segments:
        for name in result.segments:
            segment_code(name, seg_table)  # fail before any file is written
        frames = np.stack([mask_to_source_frames(m, result.affine, sources) for m in result.masks], axis=-1)
        paths["seg"] = os.path.join(out_dir, "seg.dcm")
        seg = write_segmentation(
            sources, frames, list(result.segments), algorithm_name, algorithm_version, paths["seg"],
            segment_table=seg_table,
        )
    # the SR's table: every measurement of this case coded from the config, else by its own (UCUM) unit
    table: dict[str, Any] = {}

    def values(found: Mapping[str, Measurement]) -> dict[str, float]:
        out = {}
        for name, m in _finite(found).items():
            table[concept_key(name)] = measurement_code(name, m_table, m.unit)
            out[name] = float(m.value)  # type: ignore[arg-type]
        return out

    case_values = values(result.measurements)
    per_segment = {s: values(v) for s, v in result.segment_measurements.items()} if seg is not None else {}
    per_segment = {s: v for s, v in per_segment.items() if v}
    per_image = []
    if result.image_measurements:
        ordered = sort_source_datasets(sources)
        if max(k for k, _ in result.image_measurements) < len(ordered):  # image k = k-th source image by position
            per_image = [(ordered[k], values(v)) for k, v in sorted(result.image_measurements, key=lambda t: t[0])]
        else:
            logger.warning(
                f"case '{result.case}': per-image results for {len(result.image_measurements)} images do not match "
                f"the {len(ordered)} source images; only case-level results go in the SR."
            )
    if not (case_values or per_segment or any(v for _, v in per_image)):
        logger.warning(f"case '{result.case}': no finite measurement to report; no SR written.")
    else:
        paths["sr"] = os.path.join(out_dir, "sr.dcm")
        write_measurement_report(
            sources,
            paths["sr"],
            algorithm_name,
            algorithm_version,
            measurements=case_values,
            image_measurements=[(ds, v) for ds, v in per_image if v] or None,
            segmentation=seg,
            segment_measurements=per_segment,
            measurement_table=table,
        )
    if secondary_capture:
        lines, per_image_text = capture_text(result, len(sort_source_datasets(sources)))
        for path in write_secondary_captures(
            sources, out_dir, algorithm_name, algorithm_version,
            masks=frames if seg is not None else None, segments=list(result.segments) if seg is not None else [],
            lines=lines, warnings=list(result.flags), frame_lines=per_image_text, max_frames=capture_images,
        ):
            paths[os.path.splitext(os.path.basename(path))[0]] = path
    return paths


class DicomResultWriter(CaseResultConsumer):
    """Ignite handler writing DICOM SEG + SR for each case of the hand-over that came from a DICOM source.

    Attach it to the inference evaluator after the bundle's prediction writer. Results without a DICOM source
    (NIfTI/PNG input) are skipped, counted in one log line. Written files are listed in
    ``engine.state.dicom_results`` (case -> paths) for the PACS export.

    Args:
        output_dir: SEG/SR go to ``<output_dir>/<case>/``.
        algorithm_name: the algorithm name in SEG and SR (in a config: ``"@_meta_#name"`` or the bundle's name).
        algorithm_version: its version (in a config: ``"@_meta_#version"``, from metadata.json).
        codes: the codes of the bundle's segments and measurements (a config's ``dicom_codes``).
        enabled: False makes the handler do nothing (a config flag).
        secondary_capture: also write Secondary Capture images (source + segment outlines + numbers burned in,
            "NOT FOR DIAGNOSIS") for viewers that show neither SEG nor SR (a config flag).
        capture_images: most SC images per volume (key slices; see :func:`common.dicom.sc.key_frames`).
    """

    def __init__(
        self,
        output_dir: str,
        algorithm_name: str,
        algorithm_version: str,
        codes: Mapping[str, Any] | None = None,
        enabled: bool = True,
        secondary_capture: bool = True,
        capture_images: int = 5,
    ) -> None:
        self.output_dir = str(output_dir)
        self.name, self.version = str(algorithm_name), str(algorithm_version)
        self.enabled = str(enabled).lower() not in ("false", "0", "no")
        if self.enabled and not (self.name and self.version):
            raise ValueError(
                f"algorithm_name and algorithm_version must be non-empty, got {algorithm_name!r}, "
                f"{algorithm_version!r}."
            )
        self.codes = dict(codes or {})
        self.secondary_capture = str(secondary_capture).lower() not in ("false", "0", "no")
        self.capture_images = int(capture_images)
        if self.capture_images < 1:
            raise ValueError(f"capture_images must be >= 1, got {capture_images}.")
        if self.enabled:  # a config error shows before inference starts
            segment_codes(self.codes.get("segments"))
            measurement_codes(self.codes.get("measurements"))
        self._skipped = 0

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def started(self, engine: Engine) -> None:
        self._skipped = 0
        engine.state.dicom_results = {}

    def consume(self, engine: Engine, result: CaseResult) -> None:
        if not result.source:
            self._skipped += 1
            return
        sources = read_dicom_source(result.source)
        written = write_case_result(
            result, sources, os.path.join(self.output_dir, result.case), self.name, self.version, self.codes,
            secondary_capture=self.secondary_capture, capture_images=self.capture_images,
        )
        engine.state.dicom_results[result.case] = list(written.values())
        kinds = [k for k in ("seg", "sr") if k in written]
        n_sc = sum(k.startswith("sc") for k in written)
        kinds += [f"{n_sc} SC"] if n_sc else []
        logger.info(f"case '{result.case}': DICOM {' + '.join(kinds) or 'nothing'} written from {result.source}")

    def completed(self, engine: Engine) -> None:
        if self._skipped:
            logger.info(f"{self._skipped} case(s) without a DICOM source (NIfTI/PNG input): no DICOM output for them.")
