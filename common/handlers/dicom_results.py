"""DICOM SEG + SR of a bundle's inference results, for the cases whose input was DICOM.

:class:`DicomResultWriter`, attached to the inference evaluator after the bundle's prediction writer, takes each
case's :class:`~common.handlers.case_results.CaseResult` from ``engine.state.case_results`` (in memory) and, when
the case came from a DICOM source, writes ``<output_dir>/<case>/seg.dcm`` (when the result has masks) and
``<output_dir>/<case>/sr.dcm`` into the source's study. The paths written go to ``engine.state.dicom_results``
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
from common.dicom.seg import write_segmentation
from common.dicom.sr import write_measurement_report
from common.errors import DatasetError

from .case_results import CaseResult, CaseResultConsumer, Measurement

__all__ = ["DicomResultWriter", "read_dicom_source", "write_case_result"]

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


def write_case_result(
    result: CaseResult,
    sources: list[Dataset],
    out_dir: str,
    algorithm_name: str,
    algorithm_version: str,
    codes: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``out_dir/seg.dcm`` (when ``result`` has masks) and ``out_dir/sr.dcm``; return their paths by name.

    Args:
        result: one case's hand-over from a prediction writer.
        sources: the case's DICOM source images.
        out_dir: output folder.
        algorithm_name, algorithm_version: the bundle's name and version.
        codes: the bundle config's ``dicom_codes`` (``{"segments": {...}, "measurements": {...}}``).

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
        return paths
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
    """

    def __init__(
        self,
        output_dir: str,
        algorithm_name: str,
        algorithm_version: str,
        codes: Mapping[str, Any] | None = None,
        enabled: bool = True,
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
            result, sources, os.path.join(self.output_dir, result.case), self.name, self.version, self.codes
        )
        engine.state.dicom_results[result.case] = list(written.values())
        logger.info(f"case '{result.case}': DICOM {' + '.join(sorted(written))} written from {result.source}")

    def completed(self, engine: Engine) -> None:
        if self._skipped:
            logger.info(f"{self._skipped} case(s) without a DICOM source (NIfTI/PNG input): no DICOM output for them.")
