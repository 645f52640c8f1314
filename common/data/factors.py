"""Risk-factor tables (binary / regression targets with units, scaling, plausible ranges) and their datalists.

A factor table is a list of dicts in a bundle config, one per factor::

    {"name": "sbp", "kind": "regression", "unit": "mmHg", "loss": "l1", "center": 125, "scale": 15,
     "range": [60, 260], "stage": "complex", "column": "SBP"}
    {"name": "sex", "kind": "binary", "unit": "1 = male", "loss": "bce", "stage": "prior", "column": "sex",
     "values": {"female": 0, "male": 1}}

:func:`read_factor_datalist` reads a CSV or JSON file of factor values per image into records
``{"image": path, "case": patient, "image_id": name, "factors": float32 array (NaN = missing)}``: a patient with 3
of 15 factors still gives a record that trains those 3. Bad values, missing images and columns that are not in
the table stop with one :class:`DatasetError` naming the file, or (``on_invalid="exclude"``) are dropped, counted
and logged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import case_error
from .fundus import FUNDUS_IMAGE_SUFFIXES
from .label_join import check_label_join

__all__ = [
    "FACTOR_KINDS",
    "FACTOR_LOSSES",
    "FACTOR_STAGES",
    "Factor",
    "FactorTable",
    "factor_pos_weights",
    "read_factor_datalist",
]

logger = logging.getLogger(__name__)

FACTOR_KINDS = ("binary", "regression")
FACTOR_STAGES = ("prior", "complex")
FACTOR_LOSSES = {"binary": ("bce",), "regression": ("l1", "mse", "huber")}
_MISSING_TEXT = {"", "na", "n/a", "nan", "none", "null", "missing", "-"}
_DEFAULT_BINARY_VALUES = {"0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1}


@dataclass(frozen=True)
class Factor:
    """One risk factor: its target kind, unit, loss, scaling, plausible range, stage and data column.

    Regression targets are learnt as ``(y - center) / scale``; networks report them back in original units.
    Binary targets are 0/1; ``values`` maps the data's text (case-insensitive) to 0/1.
    """

    name: str
    kind: str
    stage: str = "complex"
    unit: str = ""
    loss: str = ""
    center: float = 0.0
    scale: float = 1.0
    range: tuple[float, float] | None = None
    column: str = ""
    values: dict[str, int] = field(default_factory=dict)
    pos_weight: float | str | None = None

    @property
    def is_binary(self) -> bool:
        return self.kind == "binary"


def _parse_factor(i: int, spec: Any) -> Factor:
    where = f"factors[{i}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a dict with at least 'name' and 'kind', got {type(spec).__name__}.")
    known = {"name", "kind", "stage", "unit", "loss", "center", "scale", "range", "column", "values", "pos_weight"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(known)}.")
    name = spec.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}['name'] must be an identifier-like string (letters, digits, _), got {name!r}.")
    where = f"factors[{i}] ('{name}')"
    kind = spec.get("kind")
    if kind not in FACTOR_KINDS:
        raise ValueError(f"{where}['kind'] must be one of {list(FACTOR_KINDS)}, got {kind!r}.")
    stage = spec.get("stage", "complex")
    if stage not in FACTOR_STAGES:
        raise ValueError(f"{where}['stage'] must be one of {list(FACTOR_STAGES)}, got {stage!r}.")
    loss = spec.get("loss") or FACTOR_LOSSES[kind][0]
    if loss not in FACTOR_LOSSES[kind]:
        raise ValueError(
            f"{where}['loss'] must be one of {list(FACTOR_LOSSES[kind])} for a {kind} factor, got {loss!r}."
        )
    center, scale = float(spec.get("center", 0.0)), float(spec.get("scale", 1.0))
    if kind == "binary" and ("center" in spec or "scale" in spec):
        raise ValueError(f"{where}: 'center'/'scale' apply to regression factors only.")
    if not math.isfinite(center) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where}['scale'] must be a finite number > 0 and 'center' finite, got {center}, {scale}.")
    rng = spec.get("range")
    if rng is not None:
        if kind == "binary":
            raise ValueError(f"{where}['range'] applies to regression factors only.")
        if not isinstance(rng, Sequence) or len(rng) != 2 or not float(rng[0]) < float(rng[1]):
            raise ValueError(f"{where}['range'] must be [low, high] with low < high, got {rng!r}.")
        rng = (float(rng[0]), float(rng[1]))
    values = spec.get("values")
    if values is not None:
        if kind != "binary":
            raise ValueError(f"{where}['values'] applies to binary factors only.")
        if not isinstance(values, Mapping) or any(v not in (0, 1) for v in values.values()):
            raise ValueError(f"{where}['values'] must map text to 0 or 1, got {values!r}.")
        values = {str(k).strip().lower(): int(v) for k, v in values.items()}
    else:
        values = dict(_DEFAULT_BINARY_VALUES) if kind == "binary" else {}
    pos_weight = spec.get("pos_weight")
    if pos_weight is not None:
        if kind != "binary":
            raise ValueError(f"{where}['pos_weight'] applies to binary factors only.")
        if pos_weight != "balanced" and not (isinstance(pos_weight, (int, float)) and pos_weight > 0):
            raise ValueError(f"{where}['pos_weight'] must be a number > 0 or 'balanced', got {pos_weight!r}.")
    column = spec.get("column") or name
    return Factor(
        name=name,
        kind=kind,
        stage=stage,
        unit=str(spec.get("unit", "")),
        loss=loss,
        center=center,
        scale=scale,
        range=rng,
        column=str(column),
        values=values,
        pos_weight=pos_weight,
    )


class FactorTable(Sequence):
    """An ordered, validated list of :class:`Factor`, built from a config's list of dicts.

    Args:
        factors: one dict per factor (see the module docstring), or :class:`Factor` objects, or another table.

    Raises:
        ValueError: an empty table, a bad entry (naming ``factors[i]`` and the key), repeated names or columns.
    """

    def __init__(self, factors: Iterable[Mapping[str, Any] | Factor] | FactorTable) -> None:
        if isinstance(factors, FactorTable):
            items = list(factors.factors)
        else:
            if isinstance(factors, (str, bytes, Mapping)) or not isinstance(factors, Iterable):
                raise ValueError(f"factors must be a list of factor dicts, got {type(factors).__name__}.")
            items = [f if isinstance(f, Factor) else _parse_factor(i, f) for i, f in enumerate(factors)]
        if not items:
            raise ValueError("factors is empty: configure at least one factor.")
        for attr in ("name", "column"):
            seen = Counter(getattr(f, attr) for f in items)
            repeated = sorted(k for k, n in seen.items() if n > 1)
            if repeated:
                raise ValueError(f"factors: repeated {attr}s {repeated}; each factor needs its own.")
        self.factors: list[Factor] = items

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, str):
            for f in self.factors:
                if f.name == index:
                    return f
            raise KeyError(f"no factor named '{index}'; factors: {self.names}.")
        return self.factors[index]

    def __len__(self) -> int:
        return len(self.factors)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.factors]

    @property
    def priors(self) -> list[Factor]:
        return [f for f in self.factors if f.stage == "prior"]

    @property
    def complex(self) -> list[Factor]:
        return [f for f in self.factors if f.stage == "complex"]

    def index(self, name: str) -> int:  # type: ignore[override]
        return self.names.index(name)

    def subset(self, names: Sequence[str] | None) -> FactorTable:
        """The table restricted to ``names`` (in the table's order), e.g. one factor for a single-task baseline;
        ``None`` returns the table itself.

        Raises:
            ValueError: ``names`` is empty or names a factor that is not in the table.
        """
        if names is None:
            return self
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ValueError(f"factor_subset must name factors among {self.names}, got {list(names)}.")
        return FactorTable([f for f in self.factors if f.name in names])

    def columns_outside(self, other: FactorTable) -> list[str]:
        """Data columns of this table's factors that ``other`` (a subset) does not use: the columns to ignore when
        a subset reads data laid out for the whole table."""
        kept = set(other.names)
        return [f.column for f in self.factors if f.name not in kept]

    def to_dicts(self) -> list[dict[str, Any]]:
        """The table as JSON-serialisable dicts (e.g. for a run signature)."""
        out = []
        for f in self.factors:
            d = {"name": f.name, "kind": f.kind, "stage": f.stage, "unit": f.unit, "loss": f.loss, "column": f.column}
            if f.is_binary:
                d["values"] = dict(f.values)
                if f.pos_weight is not None:
                    d["pos_weight"] = f.pos_weight
            else:
                d.update(center=f.center, scale=f.scale, range=list(f.range) if f.range else None)
            out.append(d)
        return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSON file (a list of objects, or ``{"images": [...]}``)."""
    if not path.is_file():
        raise case_error(None, path, "factor file not found.")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data.get("images", data.get("rows")) if isinstance(data, Mapping) else data
            if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
                raise case_error(None, path, "a JSON factor file must hold a list of objects (or {'images': [...]}).")
            return [dict(r) for r in rows]
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [dict(r) for r in csv.DictReader(f)]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise case_error(None, path, f"cannot be read as {path.suffix.lstrip('.').upper()}: {err}") from err


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


def _parse_value(factor: Factor, value: Any) -> tuple[float, str | None]:
    """``(value, problem)``: the number in original units (NaN if missing), or NaN and why it is invalid."""
    if _is_missing(value):
        return float("nan"), None
    if factor.is_binary:
        if isinstance(value, bool):
            return float(value), None
        key = str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)
        key = key.strip().lower()
        if key not in factor.values:
            return float("nan"), f"{factor.column}={value!r} is not one of {sorted(factor.values)} (binary factor)"
        return float(factor.values[key]), None
    if isinstance(value, bool):
        return float("nan"), f"{factor.column}={value!r} is not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan"), f"{factor.column}={value!r} is not a number"
    if not math.isfinite(number):
        return float("nan"), f"{factor.column}={value!r} is not a finite number"
    if factor.range is not None and not factor.range[0] <= number <= factor.range[1]:
        low, high = (f"{v:g}" for v in factor.range)
        return float("nan"), (
            f"{factor.column}={number:g} is outside the plausible range [{low}, {high}] {factor.unit}".rstrip()
        )
    return number, None


def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _report_unlisted_images(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Warn (with counts and a few names) about image files next to the listed ones that ``path`` does not list."""
    listed = [Path(r["image"]) for r in records]
    folders = sorted({p.parent for p in listed})
    on_disk = [p for f in folders for p in f.iterdir() if p.is_file() and p.suffix.lower() in FUNDUS_IMAGE_SUFFIXES]
    names = {str(p): (p.name if len(folders) == 1 else str(p)) for p in on_disk}
    rows = [names[str(p)] for p in listed if str(p) in names]
    check_label_join(path, rows, names.values(), what="factor values", unit="image")


def read_factor_datalist(
    dataset_dir: str | os.PathLike,
    factors: FactorTable | Iterable[Mapping[str, Any]],
    labels_file: str | os.PathLike | None = None,
    image_template: str = "images/{image}",
    patient_column: str | None = "patient",
    ignore_columns: Sequence[str] = (),
    on_invalid: str = "error",
    require_factors: bool = True,
) -> list[dict[str, Any]]:
    """Records of the images listed in a factor file, with their factor values and per-factor missing masks.

    Args:
        dataset_dir: folder the image paths are relative to.
        factors: the factor table.
        labels_file: CSV or JSON of one row per image (default ``<dataset_dir>/factors.csv``).
        image_template: image path relative to ``dataset_dir``, formatted with the row, e.g. ``"images/{image}"``
            or ``"images/{identifier}.png"`` (default: an ``images/`` folder and an ``image`` column).
        patient_column: column of the patient id (the unit of the train/validation/test split, so both eyes of a
            patient stay together); None: each image is its own patient.
        ignore_columns: columns that are neither image, patient nor factor (e.g. ``eye``); any other column not in
            the table is an unknown factor.
        on_invalid: ``"error"``: the first bad value, missing image or unknown column raises :class:`DatasetError`
            naming the file and row; ``"exclude"``: bad values become missing, rows of missing images are dropped,
            unknown columns are ignored; each is counted and logged.
        require_factors: a factor column absent from the file is an error (else all its values are missing).

    Returns:
        ``[{"image": path, "case": patient id, "image_id": image name, "factors": float32 (n_factors,)}]``, in
        file order; NaN marks a missing value.
    """
    if on_invalid not in ("error", "exclude"):
        raise ValueError(f"on_invalid must be 'error' or 'exclude', got {on_invalid!r}.")
    table = FactorTable(factors)
    root = Path(dataset_dir)
    path = Path(labels_file) if labels_file else root / "factors.csv"
    rows = _read_rows(path)
    if not rows:
        raise case_error(None, path, "lists no image.")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fields = _template_fields(image_template)
    absent = [c for c in fields + ([patient_column] if patient_column else []) if c not in columns]
    if absent:
        raise case_error(None, path, f"has no column {absent} (columns: {columns}); set image_template/patient_column.")
    factor_columns = [f.column for f in table]
    if require_factors:
        missing_cols = [c for c in factor_columns if c not in columns]
        if missing_cols:
            raise case_error(None, path, f"has no column for factors {missing_cols} (columns: {columns}).")
    used = set(fields) | {patient_column} | set(factor_columns) | set(ignore_columns)
    unknown = [c for c in columns if c not in used]
    excluded: Counter[str] = Counter()
    if unknown:
        msg = (
            f"columns {unknown} are not factors of the table {table.names} (nor image/patient columns or "
            "ignore_columns); add them to 'factors' or list them in 'ignore_columns'"
        )
        if on_invalid == "error":
            raise case_error(None, path, msg + ".")
        logger.warning(f"file {path}: {msg}; ignored.")
        excluded["unknown column"] += len(unknown)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2 if path.suffix.lower() != ".json" else 1):
        where = f"row {line}"
        try:
            rel = image_template.format(**{k: ("" if v is None else str(v).strip()) for k, v in row.items()})
        except (KeyError, ValueError, IndexError) as err:
            raise case_error(None, path, f"{where}: image_template {image_template!r} cannot be filled: {err}") from err
        image_id = Path(rel).stem
        if not rel or any(_is_missing(row.get(f)) for f in fields):
            raise case_error(None, path, f"{where}: no image name.")
        if rel in seen:
            raise case_error(image_id, path, f"{where}: image '{rel}' is listed twice (rows {seen[rel]} and {line}).")
        seen[rel] = line
        image_path = root / rel
        if not image_path.is_file():
            if on_invalid == "error":
                raise case_error(image_id, path, f"{where}: image {image_path} is listed but does not exist.")
            logger.warning(f"file {path}, {where}: image {image_path} does not exist; row excluded.")
            excluded["missing image"] += 1
            continue
        patient = row.get(patient_column) if patient_column else None
        patient = image_id if _is_missing(patient) else str(patient).strip()
        values = np.full(len(table), np.nan, dtype=np.float32)
        for k, factor in enumerate(table):
            value, problem = _parse_value(factor, row.get(factor.column))
            if problem is not None:
                if on_invalid == "error":
                    raise case_error(image_id, path, f"{where}: {problem}.")
                logger.warning(f"file {path}, {where} (image '{image_id}'): {problem}; value excluded (missing).")
                excluded[f"{factor.name} value"] += 1
            values[k] = value
        records.append({"image": str(image_path), "case": patient, "image_id": image_id, "factors": values})
        if image_path.suffix.lower() == ".dcm":
            records[-1]["dicom_series"] = str(image_path)  # the source image that DICOM outputs reference
    if not records:
        raise case_error(None, path, "no usable image is left (see the warnings above).")
    _report_unlisted_images(path, records)
    n_patients = len({r["case"] for r in records})
    known = np.isfinite(np.stack([r["factors"] for r in records])).sum(0)
    counts = ", ".join(f"{n}={int(c)}" for n, c in zip(table.names, known))
    logger.info(f"{path}: {len(records)} images of {n_patients} patients; known values per factor: {counts}")
    if excluded:
        logger.warning(f"{path}: excluded {dict(excluded)} (on_invalid='exclude')")
    return records


def factor_pos_weights(
    records: Sequence[Mapping[str, Any]], factors: FactorTable | Iterable[Mapping]
) -> dict[str, float]:
    """``pos_weight`` of each binary factor: its configured number, or ``n_negative / n_positive`` over the
    ``records`` for ``"balanced"`` (1 with a class absent); factors without ``pos_weight`` are left out."""
    table = FactorTable(factors)
    values = np.stack([np.asarray(r["factors"], dtype=np.float32) for r in records]) if records else None
    out: dict[str, float] = {}
    for k, f in enumerate(table):
        if not f.is_binary or f.pos_weight is None:
            continue
        if f.pos_weight != "balanced":
            out[f.name] = float(f.pos_weight)
            continue
        col = values[:, k] if values is not None else np.zeros(0)
        col = col[np.isfinite(col)]
        n_pos, n_neg = int((col == 1).sum()), int((col == 0).sum())
        out[f.name] = n_neg / n_pos if n_pos and n_neg else 1.0
    return out
