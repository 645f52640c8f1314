"""Coded concepts of the DICOM results: segment definitions, measurement names and UCUM units.

The library knows no bundle's concepts: each bundle's ``inference.json`` gives the codes of its segments and
measurements under ``dicom_codes`` (read by :func:`segment_codes` and :func:`measurement_codes`), e.g.::

    "dicom_codes": {
        "segments": {"lesion": {"category": ["SCT", "49755003", "Morphologically abnormal structure"],
                                "type": ["SCT", "52988006", "Lesion"], "region": ["SCT", "12738006", "Brain"]}},
        "measurements": {"age": {"concept": ["LN", "30525-0", "Age"], "unit": "a"}}
    }

A segment's ``volume`` (SNOMED "Volume", mm3) needs no entry; a ``<name>_probability`` without an entry gets a
concept of the private coding scheme :data:`PRIVATE_SCHEME` (declared in every SR and SEG that uses it by
:func:`private_scheme_identification`) with unit ``1``, as does any other measurement whose unit is a UCUM code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

CodedConcept, _ = optional_import(
    "highdicom.sr", name="CodedConcept", descriptor="{} failed: DICOM SEG/SR output needs `pip install highdicom`"
)

__all__ = [
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "UCUM_ALIASES",
    "UCUM_MEANINGS",
    "SegmentCode",
    "MeasurementCode",
    "private_code",
    "private_scheme_identification",
    "generic_measurement_codes",
    "concept_key",
    "measurement_code",
    "measurement_codes",
    "parse_code",
    "segment_code",
    "segment_codes",
    "ucum_unit",
]

PRIVATE_SCHEME = "99MTLMONAI"
PRIVATE_SCHEME_NAME = "MTL MONAI bundles private codes"


def private_code(value: str, meaning: str) -> CodedConcept:
    """A concept of the private coding scheme :data:`PRIVATE_SCHEME` (for things with no standard code)."""
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def private_scheme_identification() -> Dataset:
    """One CodingSchemeIdentificationSequence item declaring :data:`PRIVATE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "MTL MONAI bundles contributors"
    return item


def _code(code) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


@dataclass(frozen=True)
class SegmentCode:
    """Segmented property category, type and optional anatomic region of one segment (DICOM CID 7150/7151)."""

    category: CodedConcept
    type: CodedConcept
    region: CodedConcept | None = None


def segment_code(name: str, table: Mapping[str, SegmentCode] | None = None) -> SegmentCode:
    """The codes of segment ``name`` (case-insensitive, spaces/dashes as underscores) from ``table``.

    Raises:
        ValueError: ``name`` is not in the table (the message says where a bundle config gives its codes).
    """
    table = table or {}
    key = concept_key(name)
    if key not in table:
        raise ValueError(
            f"segment '{name}' has no codes (known: {sorted(table)}); give them in the bundle's inference.json as "
            f"dicom_codes#segments#{name} = {{'category': [scheme, value, meaning], 'type': [...], 'region': [...]}}."
        )
    return table[key]


@dataclass(frozen=True)
class MeasurementCode:
    """Concept name and UCUM unit of one measurement."""

    name: CodedConcept
    unit: CodedConcept


def _ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


@cache
def generic_measurement_codes() -> dict[str, MeasurementCode]:
    """Measurements any segmentation bundle reports without configuring them: a segment's ``volume``
    (SCT 118565006 "Volume", pydicom codes.SCT.Volume) in mm3 (built on first use: it needs highdicom)."""
    return {"volume": MeasurementCode(_code(codes.SCT.Volume), _code(codes.UCUM.CubicMillimeter))}

#: Meanings of common UCUM unit codes (ucum.org); a unit not listed here is written with its code as meaning.
UCUM_MEANINGS = {
    "1": "no units",
    "%": "percent",
    "{ratio}": "ratio",
    "a": "year",
    "mo": "month",
    "d": "day",
    "mm": "millimeter",
    "cm": "centimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "mL": "milliliter",
    "kg": "kilogram",
    "kg/m2": "kilogram per square meter",
    "mm[Hg]": "millimeter of mercury",
    "mg/dL": "milligram per deciliter",
    "mmol/L": "millimole per liter",
    "/min": "per minute",
    "[hnsf'U]": "Hounsfield unit",
}


#: Names accepted for UCUM codes that a MONAI bundle config cannot hold (a string starting with ``%`` is a macro).
UCUM_ALIASES = {"percent": "%"}


def ucum_unit(code: str) -> CodedConcept:
    """The UCUM concept of unit ``code`` (e.g. ``"mm3"``).

    Raises:
        ValueError: ``code`` is not a UCUM code this project knows (``UCUM_MEANINGS``): give the unit's code in the
            bundle's ``dicom_codes`` instead of words such as ``"years"``.
    """
    code = UCUM_ALIASES.get(code, code)
    if code not in UCUM_MEANINGS:
        raise ValueError(
            f"unit '{code}' is not a known UCUM code ({sorted(UCUM_MEANINGS)}); give the measurement's unit as a UCUM "
            "code in the bundle config's dicom_codes#measurements#<name>#unit."
        )
    return _ucum(code, UCUM_MEANINGS[code])


def parse_code(value: Sequence[str] | Mapping[str, str] | CodedConcept, what: str) -> CodedConcept:
    """A coded concept from a config value: ``[scheme, value, meaning]`` or
    ``{"scheme": ..., "value": ..., "meaning": ...}``.

    Raises:
        ValueError: ``value`` is neither (``what`` names it in the message).
    """
    if isinstance(value, CodedConcept):
        return value
    if isinstance(value, Mapping) and {"scheme", "value", "meaning"} <= set(value):
        return CodedConcept(value=str(value["value"]), scheme_designator=str(value["scheme"]),
                            meaning=str(value["meaning"]))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        scheme, code, meaning = (str(v) for v in value)
        return CodedConcept(value=code, scheme_designator=scheme, meaning=meaning)
    raise ValueError(f"{what} must be [scheme, value, meaning] or a dict with those keys, got {value!r}.")


def concept_key(name: str) -> str:
    """The table key of a segment or measurement name: lower case, spaces and dashes as underscores."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def segment_codes(config: Mapping[str, Mapping[str, Any]] | None) -> dict[str, SegmentCode]:
    """Segment codes from a bundle config's ``dicom_codes#segments``: name -> ``{"category": code, "type": code,
    "region": code (optional)}`` with codes as in :func:`parse_code` (CID 7150 category, CID 7151 type)."""
    table = {}
    for name, entry in (config or {}).items():
        if not isinstance(entry, Mapping) or not {"category", "type"} <= set(entry):
            raise ValueError(f"dicom_codes#segments#{name} must give 'category' and 'type' codes, got {entry!r}.")
        region = entry.get("region")
        table[concept_key(name)] = SegmentCode(
            parse_code(entry["category"], f"dicom_codes#segments#{name}#category"),
            parse_code(entry["type"], f"dicom_codes#segments#{name}#type"),
            parse_code(region, f"dicom_codes#segments#{name}#region") if region else None,
        )
    return table


def measurement_codes(config: Mapping[str, Mapping[str, Any]] | None) -> dict[str, MeasurementCode]:
    """Measurement codes from a bundle config's ``dicom_codes#measurements``: name -> ``{"concept": code,
    "unit": UCUM code or code}`` (see :func:`parse_code`), on top of :func:`generic_measurement_codes`."""
    table = dict(generic_measurement_codes())
    for name, entry in (config or {}).items():
        if not isinstance(entry, Mapping) or not {"concept", "unit"} <= set(entry):
            raise ValueError(f"dicom_codes#measurements#{name} must give 'concept' and 'unit', got {entry!r}.")
        unit = entry["unit"]
        table[concept_key(name)] = MeasurementCode(
            parse_code(entry["concept"], f"dicom_codes#measurements#{name}#concept"),
            ucum_unit(unit) if isinstance(unit, str) else parse_code(unit, f"dicom_codes#measurements#{name}#unit"),
        )
    return table


def measurement_code(
    name: str, table: Mapping[str, MeasurementCode] | None = None, unit: str | None = None
) -> MeasurementCode:
    """The concept and unit of measurement ``name`` (case-insensitive) from ``table``.

    A name not in the table gets a private concept (``"<NAME>"``, e.g. ``"MALIGNANCY_PROBABILITY"``) with ``unit``:
    the unit the prediction writer reported, which must then be a UCUM code (``"1"`` for probabilities). A
    ``<x>_probability`` name needs no unit.

    Raises:
        ValueError: ``name`` is not in the table and has no UCUM unit.
    """
    key = concept_key(name)
    if key in (table or {}):
        return table[key]  # type: ignore[index]
    if key in generic_measurement_codes():
        return generic_measurement_codes()[key]
    if unit is None and key.endswith("_probability"):
        unit = "1"
    if unit is None:
        raise ValueError(
            f"measurement '{name}' has no code and no unit; give it in the bundle's inference.json as "
            f"dicom_codes#measurements#{name} = {{'concept': [scheme, value, meaning], 'unit': UCUM code}}."
        )
    if UCUM_ALIASES.get(unit, unit) not in UCUM_MEANINGS:
        raise ValueError(
            f"measurement '{name}': unit '{unit}' is not a known UCUM code ({sorted(UCUM_MEANINGS)}); give it in the "
            f"bundle's inference.json as dicom_codes#measurements#{name} = {{'concept': [scheme, value, meaning], "
            "'unit': UCUM code}."
        )
    unit_code = ucum_unit(unit)
    return MeasurementCode(private_code(key.upper()[:16], name.replace("_", " ")[:64]), unit_code)
