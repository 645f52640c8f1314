"""Coded concepts of the DICOM results: segment definitions, measurement names and UCUM units.

Standard codes come from ``pydicom.sr.codedict.codes`` where pydicom lists them (checked there: the code value and
meaning below are pydicom's); others cite their source (SNOMED CT, LOINC, NCI Thesaurus) in a comment. Concepts with
no standard code use the private coding scheme :data:`PRIVATE_SCHEME`, declared in every SR by
:func:`private_scheme_identification`.

The tables (:func:`segment_codes`, :func:`measurement_codes`) are built on first use: they need highdicom, which
an environment that only reads DICOM (MONAI Label's) may lack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

CodedConcept, _ = optional_import(
    "highdicom.sr", name="CodedConcept", descriptor="{} failed: DICOM SEG/SR output needs `pip install highdicom`"
)

__all__ = [
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "MeasurementCode",
    "SegmentCode",
    "measurement_code",
    "measurement_codes",
    "private_code",
    "private_scheme_identification",
    "segment_code",
    "segment_codes",
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


@cache
def segment_codes() -> dict[str, SegmentCode]:
    """The codes of the segments the bundles write, by lower-case name (built once, on first use)."""
    abnormal = _code(codes.SCT.MorphologicallyAbnormalStructure)  # SCT 49755003, CID 7150
    anatomy = _code(codes.SCT.AnatomicalStructure)  # SCT 91723000, CID 7150
    brain = _code(codes.SCT.Brain)  # SCT 12738006
    eye = _code(codes.SCT.Eye)  # SCT 81745001
    neoplasm = _code(codes.SCT.Neoplasm)  # SCT 108369006, CID 7151
    # NCI Thesaurus C113842 "Enhancing Lesion" (pydicom codes.NCIt.EnhancingLesion, CID 7151)
    enhancing = _code(codes.NCIt.EnhancingLesion)
    return {
        # glioma / BraTS regions: the standard category of lesions is "Morphologically abnormal structure" and the
        # type "Neoplasm" (SNOMED 108369006); the segment label tells the BraTS region apart.
        "tumour": SegmentCode(abnormal, neoplasm, brain),
        "glioma": SegmentCode(abnormal, neoplasm, brain),
        "wt": SegmentCode(abnormal, neoplasm, brain),
        "whole_tumour": SegmentCode(abnormal, neoplasm, brain),
        "tc": SegmentCode(abnormal, neoplasm, brain),
        "tumour_core": SegmentCode(abnormal, neoplasm, brain),
        "et": SegmentCode(abnormal, enhancing, brain),
        "enhancing_tumour": SegmentCode(abnormal, enhancing, brain),
        "necrosis": SegmentCode(abnormal, _code(codes.SCT.Necrosis), brain),  # SCT 6574001
        "edema": SegmentCode(abnormal, _code(codes.SCT.Edema), brain),  # SCT 79654002
        # a FLAIR hyperintensity: SCT 52988006 "Lesion"
        "flair_abnormality": SegmentCode(abnormal, _code(codes.SCT.Lesion), brain),
        # fundus: SCT 81016008 "Optic disc structure" (pydicom codes.SCT.OpticDiscStructure)
        "disc": SegmentCode(anatomy, _code(codes.SCT.OpticDiscStructure), eye),
        "optic_disc": SegmentCode(anatomy, _code(codes.SCT.OpticDiscStructure), eye),
        # the physiologic cup of the optic disc: no code in pydicom's dictionary that could be checked here -> private
        "cup": SegmentCode(anatomy, private_code("OPTIC_CUP", "Optic cup"), eye),
        "optic_cup": SegmentCode(anatomy, private_code("OPTIC_CUP", "Optic cup"), eye),
    }


def segment_code(name: str, table: Mapping[str, SegmentCode] | None = None) -> SegmentCode:
    """The codes of segment ``name`` (case-insensitive, spaces/dashes as underscores) from ``table``.

    Raises:
        ValueError: ``name`` is not in the table.
    """
    table = segment_codes() if table is None else table
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in table:
        raise ValueError(f"segment name '{name}' has no codes; known: {sorted(table)}.")
    return table[key]


@dataclass(frozen=True)
class MeasurementCode:
    """Concept name and UCUM unit of one measurement."""

    name: CodedConcept
    unit: CodedConcept


def _ln(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="LN", meaning=meaning)


def _ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


def _no_units() -> CodedConcept:
    return _code(codes.UCUM.NoUnits)  # UCUM "1"


@cache
def measurement_codes() -> dict[str, MeasurementCode]:
    """The concepts and units of the measurements the bundles report, by lower-case name (built once, on first
    use)."""
    no_units, ratio = _no_units(), _code(codes.UCUM.Ratio)  # UCUM "1" and "{ratio}"
    return {
        # LOINC codes (loinc.org): 30525-0 Age, 8302-2 Body height, 29463-7 Body weight, 39156-5 BMI,
        # 8480-6 / 8462-4 systolic / diastolic blood pressure (pydicom codes.LN.IntravascularSystolic/Diastolic...),
        # 2345-7 Glucose [Mass/volume] in Serum or Plasma, 4548-4 Hemoglobin A1c/Hemoglobin.total in Blood,
        # 8280-0 Waist circumference at umbilicus by tape measure
        "age": MeasurementCode(_ln("30525-0", "Age"), _ucum("a", "year")),
        "height": MeasurementCode(_ln("8302-2", "Body height"), _ucum("cm", "centimeter")),
        "weight": MeasurementCode(_ln("29463-7", "Body weight"), _ucum("kg", "kilogram")),
        "bmi": MeasurementCode(
            _ln("39156-5", "Body mass index (BMI) [Ratio]"), _ucum("kg/m2", "kilogram per square meter")
        ),
        "waist": MeasurementCode(
            _ln("8280-0", "Waist Circumference at umbilicus by Tape measure"), _ucum("cm", "centimeter")
        ),
        "sbp": MeasurementCode(_ln("8480-6", "Systolic blood pressure"), _ucum("mm[Hg]", "millimeter of mercury")),
        "dbp": MeasurementCode(_ln("8462-4", "Diastolic blood pressure"), _ucum("mm[Hg]", "millimeter of mercury")),
        "glucose": MeasurementCode(
            _ln("2345-7", "Glucose [Mass/volume] in Serum or Plasma"), _ucum("mg/dL", "milligram per deciliter")
        ),
        "hba1c": MeasurementCode(_ln("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"), _code(codes.UCUM.Percent)),
        # vertical cup-to-disc ratio: no standard code found -> private
        "vcdr": MeasurementCode(private_code("VCDR", "Vertical cup-to-disc ratio"), ratio),
        # volume of a segment: SCT 118565006 "Volume" (pydicom codes.SCT.Volume), UCUM mm3
        "volume": MeasurementCode(_code(codes.SCT.Volume), _code(codes.UCUM.CubicMillimeter)),
        # probabilities of a class: no standard codes -> private, unit "1" (a fraction in [0, 1])
        "idh_probability": MeasurementCode(private_code("IDH_MUT_PROB", "IDH mutation probability"), no_units),
        "glaucoma_probability": MeasurementCode(private_code("GLAUCOMA_PROB", "Glaucoma probability"), no_units),
        "tumour_probability": MeasurementCode(private_code("TUMOUR_PROB", "Tumour presence probability"), no_units),
        "sex_probability": MeasurementCode(private_code("MALE_SEX_PROB", "Probability of male sex"), no_units),
    }


def measurement_code(name: str, table: Mapping[str, MeasurementCode] | None = None) -> MeasurementCode:
    """The concept and unit of measurement ``name`` (case-insensitive) from ``table``.

    Unknown ``<x>_probability`` names get a private concept ``"<X>_PROB"`` with unit ``1``.

    Raises:
        ValueError: ``name`` is not in the table and is not a probability.
    """
    table = measurement_codes() if table is None else table
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in table:
        return table[key]
    if key.endswith("_probability"):
        stem = key[: -len("_probability")]
        concept = private_code(f"{stem.upper()}_PROB", f"{stem.replace('_', ' ')} probability")
        return MeasurementCode(concept, _no_units())
    raise ValueError(f"measurement name '{name}' has no code; known: {sorted(table)}.")
