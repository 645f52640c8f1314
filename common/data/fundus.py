"""Datalists of colour fundus photographs with optic disc/cup masks, glaucoma labels and reference CDRs."""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

from ..errors import DatasetError, case_error
from .label_join import check_label_join

__all__ = ["FUNDUS_IMAGE_SUFFIXES", "build_fundus_datalist", "list_fundus_images", "scan_image_folder"]

logger = logging.getLogger(__name__)

#: File suffixes read as fundus photographs (``.dcm``: a DICOM photograph, see :mod:`common.dicom.photo`).
FUNDUS_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm")


def scan_image_folder(folder: str | PathLike, extensions: Sequence[str] = FUNDUS_IMAGE_SUFFIXES) -> list[Path]:
    """The image files directly in ``folder`` (sorted), with one warning counting what was skipped and why.

    Skipped, and counted by reason: files whose suffix is not in ``extensions`` (listed by suffix) and files inside
    sub-folders (only the folder itself is read; listed by sub-folder). Hidden files (``.DS_Store``, ...) are
    ignored without a count.

    Args:
        folder: the image folder.
        extensions: accepted file suffixes (case-insensitive).
    """
    folder = Path(folder)
    exts = {e.lower() for e in extensions}
    files: list[Path] = []
    by_suffix: Counter[str] = Counter()
    by_subfolder: Counter[str] = Counter()
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            n = sum(1 for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if n:
                by_subfolder[path.name + "/"] += n
        elif path.suffix.lower() in exts:
            files.append(path)
        else:
            by_suffix[path.suffix.lower() or "(no suffix)"] += 1
    reasons = []
    if by_suffix:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(by_suffix.items()))
        reasons.append(
            f"{sum(by_suffix.values())} with an unsupported suffix ({listed}; read: {', '.join(sorted(exts))})"
        )
    if by_subfolder:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(by_subfolder.items()))
        reasons.append(
            f"{sum(by_subfolder.values())} in sub-folders ({listed}; only files directly in the folder are read)"
        )
    if reasons:
        total = sum(by_suffix.values()) + sum(by_subfolder.values())
        logger.warning(f"folder {folder}: {len(files)} image(s) read, {total} file(s) skipped: {'; '.join(reasons)}.")
    return files


def _read_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DatasetError(f"file {path}: label file is empty (expected a header row).")
    header = [h.strip() for h in rows[0]]
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        case = Path(row[0].strip()).stem
        if not case:
            raise DatasetError(f"file {path}, row {line}: empty image id in the first column.")
        if case in table:
            raise case_error(case, path, f"row {line}: image id repeated.")
        table[case] = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
    return header, table


def build_fundus_datalist(
    dataset_dir: str | PathLike,
    image_dir: str = "images",
    mask_dir: str = "masks",
    masks: Mapping[str, str] | None = None,
    labels_csv: str | None = "labels.csv",
    label_column: str = "label",
    cdr_prefix: str = "cdr",
    split_column: str = "source_split",
    require_masks: bool = True,
) -> list[dict]:
    """One record per photograph in ``dataset_dir/image_dir`` (Drishti-GS / REFUGE-like layout).

    Records hold ``case`` (file stem), ``image`` (path), one path per mask kind (``masks``: key -> file suffix in
    ``mask_dir``, default ``{"disc": "_disc.png", "cup": "_cup.png"}``), ``label_column`` (1, 0, or -1 where
    unknown), ``cdr`` (mean of the label file's columns whose names start with ``cdr_prefix``, e.g. four experts'
    vertical CDRs; nan where none) and ``split`` (the ``split_column`` value, e.g. an official ``test``); a
    ``.dcm`` image (a DICOM photograph) also gets ``dicom_series``: its path.

    Args:
        dataset_dir: data set folder.
        image_dir: sub-folder of the photographs.
        mask_dir: sub-folder of the masks.
        masks: mask key -> file-name suffix appended to the image stem.
        labels_csv: label file in ``dataset_dir`` (first column: image id, with or without suffix); None or a
            missing file leaves labels unknown.
        label_column: binary label column (values 1/0, empty = unknown).
        cdr_prefix: prefix of the reference CDR columns.
        split_column: column of a predefined split.
        require_masks: every image must have every mask (training, evaluation); False lets masks be missing
            (their keys are then None).

    Raises:
        DatasetError: missing folder, no images, a label row without an image, a missing mask (with
            ``require_masks``), a label that is not 0/1, or a CDR that is not a number.
    """
    root = Path(dataset_dir)
    folder = root / image_dir
    if not folder.is_dir():
        raise DatasetError(f"folder {folder}: image folder does not exist (expected {image_dir}/ in {root}).")
    images = {p.stem: p for p in scan_image_folder(folder)}
    if not images:
        raise DatasetError(f"folder {folder}: no images ({', '.join(FUNDUS_IMAGE_SUFFIXES)}) found.")
    masks = dict(masks) if masks is not None else {"disc": "_disc.png", "cup": "_cup.png"}
    header: list[str] = []
    table: dict[str, dict[str, str]] = {}
    label_path = root / labels_csv if labels_csv else None
    if label_path is not None and label_path.is_file():
        header, table = _read_table(label_path)
        orphans = sorted(set(table) - set(images))
        if orphans:
            raise case_error(
                orphans[0], label_path, f"listed in the label file but no image in {folder} ({len(orphans)} such rows)."
            )
        check_label_join(label_path, table, images, what=f"'{label_column}'", unit="image")
    cdr_columns = [h for h in header[1:] if h.lower().startswith(cdr_prefix.lower())] if cdr_prefix else []
    records = []
    for case, path in images.items():
        rec: dict = {"case": case, "image": str(path)}
        if path.suffix.lower() == ".dcm":
            rec["dicom_series"] = str(path)  # the source image that DICOM outputs reference
        for key, suffix in masks.items():
            mask = root / mask_dir / f"{case}{suffix}"
            if not mask.is_file():
                if require_masks:
                    raise case_error(case, mask, f"'{key}' mask is missing (expected next to the other masks).")
                mask = None
            rec[key] = None if mask is None else str(mask)
        row = table.get(case, {})
        value = row.get(label_column, "")
        if value == "":
            rec[label_column] = -1
        else:
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if number not in (0.0, 1.0):
                raise case_error(case, label_path, f"{label_column}='{value}' is not 1, 0 or empty (unknown).")
            rec[label_column] = int(number)
        cdrs = []
        for col in cdr_columns:
            if row.get(col, "") == "":
                continue
            try:
                cdr = float(row[col])
            except ValueError as err:
                raise case_error(case, label_path, f"{col}='{row[col]}' is not a number.") from err
            if not 0.0 <= cdr <= 1.0:
                raise case_error(case, label_path, f"{col}={cdr} is outside [0, 1] (a cup-to-disc ratio).")
            cdrs.append(cdr)
        rec["cdr"] = sum(cdrs) / len(cdrs) if cdrs else math.nan
        rec["split"] = row.get(split_column, "")
        records.append(rec)
    return records


def list_fundus_images(dataset_dir: str | PathLike, extensions: Sequence[str] = FUNDUS_IMAGE_SUFFIXES) -> list[dict]:
    """Records ``{"image", "case", "image_id"}`` of every image file directly in ``dataset_dir`` (no labels), or,
    where it holds none, in its ``images/`` folder (the training layout). Skipped files are counted in one warning
    (see :func:`scan_image_folder`).

    Raises:
        DatasetError: the folder does not exist or holds no image.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise case_error(None, root, "is not a folder of images.")
    exts = {e.lower() for e in extensions}
    top = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if not top and (root / "images").is_dir():
        files = scan_image_folder(root / "images", extensions)  # the training layout: its other folders are masks
    else:
        files = scan_image_folder(root, extensions)
    if not files:
        raise DatasetError(f"folder {root}: no image with extension {sorted(exts)}.")
    records = [{"image": str(p), "case": p.stem, "image_id": p.stem} for p in files]
    for record, path in zip(records, files):
        if path.suffix.lower() == ".dcm":
            record["dicom_series"] = str(path)  # the source image that DICOM outputs reference
    return records
