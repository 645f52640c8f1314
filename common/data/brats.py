"""Finding BraTS-style cases on disk (one NIfTI file per modality) and reading per-case labels from a CSV file."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from os import PathLike
from pathlib import Path

from ..dicom.study import holds_dicom, map_study_modalities
from ..errors import DatasetError, case_error
from .label_join import check_label_join

__all__ = ["BRATS_MODALITIES", "attach_case_labels", "build_brats_datalist", "read_case_labels"]

#: The four BraTS MRI sequences, in the conventional channel order.
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# <case>_<kind>.nii or <case>_<kind>.nii.gz; the case id may itself hold underscores (TCGA_CS_4941).
_FILE_PATTERN = re.compile(r"^(?P<case>.+)_(?P<kind>[A-Za-z0-9]+)\.nii(?:\.gz)?$")


def _check_modalities(modalities: Sequence[str] | str) -> list[str]:
    """Validate the ``modalities`` argument and return it as a list."""
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = list(modalities)
    if not modalities:
        raise ValueError(f"modalities must name at least one of {list(BRATS_MODALITIES)}, got an empty list.")
    unknown = [m for m in modalities if m not in BRATS_MODALITIES]
    if unknown:
        raise ValueError(f"modalities holds unknown modality name(s) {unknown}; known: {list(BRATS_MODALITIES)}.")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities holds duplicates: {modalities}.")
    return modalities


def _scan_folder(folder: Path, kinds: Collection[str]) -> dict[str, dict[str, Path]]:
    """Map case id -> kind -> file for the ``<case>_<kind>.nii[.gz]`` files in ``folder`` whose kind is in ``kinds``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _FILE_PATTERN.match(path.name)
        if not path.is_file() or match is None or match["kind"] not in kinds:
            continue
        files = found.setdefault(match["case"], {})
        kind = match["kind"]
        if kind in files:
            raise case_error(
                match["case"], path, f"two files for '{kind}' ({files[kind].name} and {path.name}); keep one."
            )
        files[kind] = path
    return found


def build_brats_datalist(
    dataset_dir: str | PathLike,
    modalities: Sequence[str],
    seg_suffix: str = "seg",
    require_seg: bool = True,
    modality_rules: Sequence | None = None,
) -> list[dict]:
    """List the cases of a BraTS-style data set.

    Two layouts are accepted (and may be mixed): a sub-folder per case holding ``<case>_<modality>.nii.gz``
    files (``.nii`` also accepted), or such files directly in ``dataset_dir``. Other files (``_brainmask``,
    ``LICENSE.txt``, ``labels.csv``, ...) and folders without case files are ignored.

    A sub-folder without NIfTI modality files that holds DICOM files is read as a DICOM study (case id = folder
    name): its series are mapped to ``modalities`` by ``modality_rules`` (see :mod:`common.dicom.study`); its
    record holds, per modality, the series folder (or its list of files when the series shares a folder),
    ``"dicom_series"`` (that of the first modality: the geometry reference of DICOM outputs) and ``"dicom_study"``
    (the case folder); ``"seg"`` is a ``<case>_<seg_suffix>.nii.gz`` file in the case folder if there is one.

    Args:
        dataset_dir: folder of the data set.
        modalities: modalities to load, in channel order; a subset of :data:`BRATS_MODALITIES`.
        seg_suffix: file suffix of the segmentation (``<case>_<seg_suffix>.nii.gz``).
        require_seg: raise when a case has no segmentation; otherwise its ``"seg"`` is ``None``.
        modality_rules: rules mapping DICOM series to modalities (default
            ``common.dicom.DEFAULT_MODALITY_RULES``); only used for DICOM study folders.

    Returns:
        One dict per case, sorted by case id: ``{"case": id, "image": [paths in modalities order],
        "seg": path or None, "<modality>": path, ...}`` with paths as strings.

    Raises:
        ValueError: ``modalities`` is empty, holds duplicates or an unknown name.
        DatasetError: the folder is missing or holds no case, a case lacks a requested modality or (with
            ``require_seg``) its segmentation, or a case has two files for one modality.
    """
    modalities = _check_modalities(modalities)
    root = Path(dataset_dir)
    layout = (
        f"expected <case>/<case>_<modality>.nii.gz (one sub-folder per case) or <case>_<modality>.nii.gz files "
        f"directly in the folder, for modalities {modalities} and segmentation '<case>_{seg_suffix}.nii.gz'"
    )
    if not root.is_dir():
        raise DatasetError(f"empty data set: folder {root} does not exist ({layout}).")

    kinds = set(BRATS_MODALITIES) | {seg_suffix}
    cases: dict[str, tuple[Path, dict[str, Path]]] = {}  # case -> (folder, kind -> file)
    dicom_cases: dict[str, Path] = {}  # case -> DICOM study folder
    for case, files in _scan_folder(root, kinds).items():
        cases[case] = (root, files)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = _scan_folder(sub, kinds)
        if not any(set(files) - {seg_suffix} for files in found.values()) and holds_dicom(sub):
            found = {sub.name: {**found.get(sub.name, {}), "dicom": sub}}
        for case, files in found.items():
            if case in cases:
                raise case_error(case, sub, f"case found twice: in {sub} and in {cases[case][0]}.")
            cases[case] = (sub, files)
            if "dicom" in files:
                dicom_cases[case] = sub
    if not cases:
        raise DatasetError(f"empty data set: no cases found in {root} ({layout}).")

    datalist = []
    for case in sorted(cases):
        folder, files = cases[case]
        if case in dicom_cases:
            datalist.append(_dicom_record(case, folder, files.get(seg_suffix), modalities, modality_rules,
                                          require_seg, seg_suffix))
            continue
        present = sorted(k for k in files if k != seg_suffix)
        for modality in modalities:
            if modality not in files:
                expected = folder / f"{case}_{modality}.nii.gz"
                raise case_error(
                    case, expected, f"missing modality '{modality}' (the case has modalities {present or 'none'})."
                )
        seg = files.get(seg_suffix)
        if seg is None and require_seg:
            expected = folder / f"{case}_{seg_suffix}.nii.gz"
            raise case_error(case, expected, f"missing segmentation '{seg_suffix}' (require_seg=True).")
        record: dict = {
            "case": case,
            "image": [str(files[m]) for m in modalities],
            "seg": None if seg is None else str(seg),
        }
        record.update({m: str(files[m]) for m in modalities})
        datalist.append(record)
    return datalist


def _dicom_record(
    case: str,
    folder: Path,
    seg: Path | None,
    modalities: Sequence[str],
    modality_rules: Sequence | None,
    require_seg: bool,
    seg_suffix: str,
) -> dict:
    """The datalist record of a case given as a DICOM study folder (see :func:`build_brats_datalist`)."""
    if seg is None and require_seg:
        expected = folder / f"{case}_{seg_suffix}.nii.gz"
        raise case_error(case, expected, f"missing segmentation '{seg_suffix}' (require_seg=True; DICOM study).")
    series = map_study_modalities(folder, modalities, modality_rules)
    sources = {m: series[m].source for m in modalities}
    return {
        "case": case,
        "image": [sources[m] for m in modalities],
        "seg": None if seg is None else str(seg),
        **sources,
        "dicom_series": sources[modalities[0]],
        "dicom_study": str(folder),
    }


def read_case_labels(csv_path: str | PathLike, column: str, allowed: Collection[str] | None = None) -> dict[str, str]:
    """Read one per-case label column of a CSV file whose first column is the case id.

    Args:
        csv_path: the CSV file, with a header row (e.g. ``labels.csv`` with ``patient,idh_status,...``).
        column: header name of the label column.
        allowed: if given, every value (whitespace stripped) must be one of these.

    Returns:
        ``{case: value}`` in file order, values stripped of surrounding whitespace.

    Raises:
        DatasetError: missing file, missing column, empty or repeated case id, or a value outside ``allowed``.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"file {path}: label file does not exist.")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DatasetError(f"file {path}: label file is empty (expected a header row).")
    header = [h.strip() for h in rows[0]]
    if column not in header:
        raise DatasetError(f"file {path}: no column '{column}'; columns are {header}.")
    index = header.index(column)
    allowed_set = None if allowed is None else {str(a) for a in allowed}
    labels: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        case = row[0].strip()
        if not case:
            raise DatasetError(f"file {path}, row {line}: empty case id in the first column.")
        if case in labels:
            raise case_error(case, path, f"row {line}: case id repeated.")
        value = row[index].strip() if index < len(row) else ""
        if allowed_set is not None and value not in allowed_set:
            raise case_error(case, path, f"row {line}: {column}='{value}' is not one of {sorted(allowed_set)}.")
        labels[case] = value
    return labels


def attach_case_labels(
    datalist: Sequence[dict],
    csv_path: str | PathLike,
    column: str,
    mapping: Mapping[str, int | float],
    key: str | None = None,
    missing_value: int | float = -1,
    required: bool = False,
) -> list[dict]:
    """Copy of ``datalist`` with one per-case label read from a CSV column and coded by ``mapping``.

    Example: ``attach_case_labels(datalist, "lgg/labels.csv", "idh_status", {"mutant": 1, "wildtype": 0,
    "unknown": -1, "": -1}, key="idh")``. A case absent from the CSV, or every case when the CSV does not exist and
    ``required`` is False (e.g. a segmentation-only data set), gets ``missing_value``. Rows that match no case and
    cases without a row are counted and logged (see :func:`~common.data.label_join.check_label_join`).

    Args:
        datalist: records with a ``"case"`` key (from :func:`build_brats_datalist`).
        csv_path: label CSV whose first column is the case id.
        column: label column.
        mapping: CSV value -> coded label; any other value is an error naming the case and the file.
        key: record key of the label (default ``column``).
        missing_value: label of cases without a value.
        required: raise when the CSV does not exist.

    Raises:
        DatasetError: a value outside ``mapping``, a missing column, (with ``required``) a missing file, or a file
            none of whose rows matches a case (the message shows a few ids of each side).
    """
    path = Path(csv_path)
    key = key or column
    if not path.is_file():
        if required:
            raise DatasetError(f"file {path}: label file does not exist (column '{column}' is required).")
        logging.getLogger(__name__).warning("%s not found: '%s' is unknown for all %d cases.", path, key, len(datalist))
        labels: dict[str, str] = {}
    else:
        labels = read_case_labels(path, column, allowed=list(mapping))
        check_label_join(path, labels, [record["case"] for record in datalist], what=f"'{key}'")
    return [{**record, key: mapping[labels[record["case"]]] if record["case"] in labels else missing_value}
            for record in datalist]
