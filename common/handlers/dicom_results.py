"""DICOM SEG + SR of a bundle's inference outputs, for the cases whose input was DICOM.

The bundles' prediction writers (:class:`SegClassPredictionWriter`, :class:`FundusPredictionWriter`,
:class:`FactorPredictionWriter`, :class:`SlicePredictionWriter`) write their per-case files and ``predictions.csv``;
:class:`DicomResultWriter`, attached after them to the same evaluator, reads those outputs when the run completes
and writes ``<output_dir>/<case>/seg.dcm`` and ``<output_dir>/<case>/sr.dcm`` for every case whose batch carried a
DICOM source (key ``"dicom_series"``: a series folder, or one ``.dcm`` photograph). The same conversion runs on a
finished inference output folder from the command line::

    python -m common.handlers.dicom_results bundles/glioma_seg_idh <inference output_dir> <dicom input dir>

where each case's source is ``<dicom input dir>/<case>`` (a series folder) or ``<dicom input dir>/<case>.dcm``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from ignite.engine import Engine, Events
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.dicom.frames import mask_to_source_frames, sort_source_datasets
from common.dicom.seg import write_segmentation
from common.dicom.sr import write_measurement_report
from common.errors import DatasetError

__all__ = [
    "BUNDLE_KINDS",
    "DicomResultWriter",
    "bundle_identity",
    "case_results",
    "read_dicom_source",
    "write_case_results",
    "write_results_for_output_dir",
]

logger = logging.getLogger(__name__)

#: What each bundle's inference writes, by bundle folder name: "seg_class" (label map NIfTI + JSON), "fundus"
#: (disc/cup PNG masks + JSON), "factors" (predictions.csv with one row per image), "slices" (a row per slice).
BUNDLE_KINDS = {
    "glioma_seg_idh": "seg_class",
    "fundus_glaucoma": "fundus",
    "cmr_fundus": "factors",
    "brats_mtl": "slices",
}


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


def bundle_identity(bundle_root: str) -> tuple[str, str]:
    """(name, version) of a bundle: its folder name and the ``version`` of its ``configs/metadata.json``."""
    meta = os.path.join(bundle_root, "configs", "metadata.json")
    if not os.path.isfile(meta):
        raise ValueError(f"bundle_root '{bundle_root}' has no configs/metadata.json.")
    with open(meta) as f:
        version = str(json.load(f)["version"])
    return os.path.basename(os.path.normpath(os.path.abspath(bundle_root))), version


def _read_csv(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise DatasetError(f"inference output '{path}' is missing.")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def case_results(kind: str, output_dir: str, case: str, sources: Sequence[Dataset]) -> dict[str, Any]:
    """Read one case's inference outputs from ``output_dir`` as keyword arguments of :func:`write_case_results`.

    Args:
        kind: one of the values of :data:`BUNDLE_KINDS`.
        output_dir: the bundle's inference output folder.
        case: the case (image) id.
        sources: the case's DICOM source images.
    """
    folder = os.path.join(output_dir, case)
    if kind == "seg_class":
        jsons = sorted(glob.glob(os.path.join(folder, f"{case}_*.json")))
        if not jsons:
            raise DatasetError(f"case '{case}': no {case}_<task>.json in {folder}.")
        with open(jsons[0]) as f:
            row = json.load(f)
        image = nib.load(os.path.join(output_dir, row.get("segmentation", os.path.join(case, f"{case}_seg.nii.gz"))))
        label_map = np.asarray(image.dataobj).astype(np.uint8)
        regions = [k[: -len("_mm3")] for k in row if k.endswith("_mm3")]
        frames = mask_to_source_frames(label_map, image.affine, sources)
        # the label map holds the innermost region (regions listed outermost first): region k = label >= k
        masks = np.stack([frames >= k for k in range(1, len(regions) + 1)], axis=-1)
        probs = {k: row[k] for k in row if k.endswith("_probability")}
        return {
            "masks": masks,
            "segments": regions,
            "measurements": probs,
            "segment_measurements": {r: {"volume": row[f"{r}_mm3"]} for r in regions},
        }
    if kind == "fundus":
        with open(os.path.join(folder, f"{case}_glaucoma.json")) as f:
            row = json.load(f)
        disc = np.asarray(Image.open(os.path.join(output_dir, row["disc_mask"]))) > 0
        cup = np.asarray(Image.open(os.path.join(output_dir, row["cup_mask"]))) > 0
        masks = np.stack([mask_to_source_frames(m, None, sources) for m in (disc, cup)], axis=-1)
        return {
            "masks": masks,
            "segments": ["optic_disc", "optic_cup"],
            "measurements": {"glaucoma_probability": row.get("glaucoma_probability")},
            "segment_measurements": {"optic_cup": {"vcdr": row.get("vcdr")}},
        }
    if kind == "factors":
        rows = [r for r in _read_csv(os.path.join(output_dir, "predictions.csv")) if r.get("image_id") == case]
        if not rows:
            raise DatasetError(f"image '{case}' has no row in {output_dir}/predictions.csv.")
        skip = ("image_id", "patient", "case")
        values = {
            k: _number(v)
            for k, v in rows[0].items()
            if k not in skip and not k.endswith(("_prediction", "_true")) and _number(v) is not None
        }
        return {"measurements": values}
    if kind == "slices":
        rows = [r for r in _read_csv(os.path.join(output_dir, "predictions.csv")) if r.get("case") == case]
        if not rows:
            raise DatasetError(f"case '{case}' has no row in {output_dir}/predictions.csv.")
        probs = {int(r["slice"]): float(r["probability"]) for r in rows}
        out: dict[str, Any] = {"measurements": {"tumour_probability": max(probs.values())}}
        ordered = sort_source_datasets(sources)
        if max(probs) < len(ordered):  # slice k of the volume = k-th source image by position
            out["image_measurements"] = [(ordered[k], {"tumour_probability": p}) for k, p in sorted(probs.items())]
        return out
    raise ValueError(f"kind must be one of {sorted(set(BUNDLE_KINDS.values()))}, got '{kind}'.")


def write_case_results(
    sources: Sequence[Dataset],
    out_dir: str,
    algorithm_name: str,
    algorithm_version: str,
    masks: np.ndarray | None = None,
    segments: Sequence[str] = (),
    measurements: Mapping[str, Any] | None = None,
    segment_measurements: Mapping[str, Mapping[str, Any]] | None = None,
    image_measurements: Sequence[tuple[Dataset, Mapping[str, float]]] | None = None,
) -> dict[str, str]:
    """Write ``out_dir/seg.dcm`` (when ``masks`` are given) and ``out_dir/sr.dcm``; return their paths by name.

    ``masks`` are ``(n_frames, Rows, Columns, n_segments)`` aligned to the sorted source frames.
    """
    paths, seg = {}, None
    if masks is not None:
        paths["seg"] = os.path.join(out_dir, "seg.dcm")
        seg = write_segmentation(sources, masks, list(segments), algorithm_name, algorithm_version, paths["seg"])
    clean = {k: float(v) for k, v in (measurements or {}).items() if _number(v) is not None}
    per_segment = {
        s: {k: float(v) for k, v in values.items() if _number(v) is not None}
        for s, values in (segment_measurements or {}).items()
    }
    per_segment = {s: v for s, v in per_segment.items() if v} if seg is not None else {}
    paths["sr"] = os.path.join(out_dir, "sr.dcm")
    write_measurement_report(
        sources,
        paths["sr"],
        algorithm_name,
        algorithm_version,
        measurements=clean,
        image_measurements=image_measurements,
        segmentation=seg,
        segment_measurements=per_segment,
    )
    return paths


def write_results_for_output_dir(
    kind: str,
    output_dir: str,
    sources_by_case: Mapping[str, str],
    algorithm_name: str,
    algorithm_version: str,
) -> dict[str, dict[str, str]]:
    """Write SEG + SR into ``output_dir/<case>/`` for every case of ``sources_by_case`` (case -> DICOM source)."""
    written = {}
    for case, source in sources_by_case.items():
        sources = read_dicom_source(source)
        results = case_results(kind, output_dir, str(case), sources)
        written[str(case)] = write_case_results(
            sources, os.path.join(output_dir, str(case)), algorithm_name, algorithm_version, **results
        )
        logger.info(f"case '{case}': DICOM {' + '.join(sorted(written[str(case)]))} written from {source}")
    return written


class DicomResultWriter:
    """Ignite handler writing DICOM SEG + SR per case whose batch carries a DICOM source.

    Attach it to the inference evaluator after the bundle's prediction writer (it reads that writer's outputs
    when the run completes). Items without ``series_key`` (NIfTI/PNG input) are skipped, logged once.

    Args:
        output_dir: the prediction writer's output folder (SEG/SR go to ``<output_dir>/<case>/``).
        bundle_name: the bundle's name (the algorithm name in SEG and SR), e.g. ``"glioma_seg_idh"``.
        bundle_version: the bundle's version (in a config: ``"@_meta_#version"``, from metadata.json).
        kind: what the prediction writer writes (default from ``bundle_name``, see :data:`BUNDLE_KINDS`).
        series_key: batch key of the DICOM source path.
        case_key: batch key of the case id (``"image_id"`` for cmr_fundus).
        enabled: False makes the handler do nothing (a config flag).
    """

    def __init__(
        self,
        output_dir: str,
        bundle_name: str,
        bundle_version: str,
        kind: str | None = None,
        series_key: str = "dicom_series",
        case_key: str = "case",
        enabled: bool = True,
    ) -> None:
        self.output_dir, self.series_key, self.case_key = str(output_dir), series_key, case_key
        self.name, self.version = str(bundle_name), str(bundle_version)
        self.enabled = str(enabled).lower() not in ("false", "0", "no")
        self.kind = kind or BUNDLE_KINDS.get(self.name)
        if self.enabled and self.kind not in set(BUNDLE_KINDS.values()):
            raise ValueError(f"kind must be one of {sorted(set(BUNDLE_KINDS.values()))}, got {self.kind!r}.")
        if self.enabled and not (self.name and self.version):
            raise ValueError(
                f"bundle_name and bundle_version must be non-empty, got {bundle_name!r}, {bundle_version!r}."
            )
        self.sources: dict[str, str] = {}
        self._skipped = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.sources, self._skipped = {}, 0

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        cases = list(batch.get(self.case_key) or [])
        series = batch.get(self.series_key)
        if series is None:
            self._skipped += len(cases)
            return
        for case, source in zip(cases, list(series)):
            if source:
                self.sources[str(case)] = str(source)
            else:
                self._skipped += 1

    def _write(self, engine: Engine) -> None:
        if self._skipped:
            logger.info(f"{self._skipped} item(s) without '{self.series_key}' (not DICOM input): no DICOM output.")
        if self.sources:
            write_results_for_output_dir(self.kind, self.output_dir, self.sources, self.name, self.version)


def _sources_in(dicom_dir: str, cases: Sequence[str]) -> dict[str, str]:
    found = {}
    for case in cases:
        for candidate in (os.path.join(dicom_dir, case), os.path.join(dicom_dir, f"{case}.dcm")):
            if os.path.exists(candidate):
                found[case] = candidate
                break
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write DICOM SEG + SR from a bundle's inference outputs.")
    parser.add_argument("bundle_root", help="bundle folder, e.g. bundles/glioma_seg_idh")
    parser.add_argument("output_dir", help="the bundle's inference output folder")
    parser.add_argument("dicom_dir", help="folder of the DICOM inputs: <case>/ series folders or <case>.dcm files")
    parser.add_argument("--kind", default=None, help=f"output kind (default from the bundle name: {BUNDLE_KINDS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name, version = bundle_identity(args.bundle_root)
    kind = args.kind or BUNDLE_KINDS.get(name)
    if kind is None:
        parser.error(f"unknown bundle '{name}': give --kind.")
    if kind in ("factors", "slices"):
        column = "image_id" if kind == "factors" else "case"
        cases = sorted({r[column] for r in _read_csv(os.path.join(args.output_dir, "predictions.csv"))})
    else:
        cases = sorted(d for d in os.listdir(args.output_dir) if os.path.isdir(os.path.join(args.output_dir, d)))
    sources = _sources_in(args.dicom_dir, cases)
    if not sources:
        parser.error(f"no case of {args.output_dir} has a DICOM source in {args.dicom_dir}.")
    written = write_results_for_output_dir(kind, args.output_dir, sources, name, version)
    print(json.dumps(written, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
