"""DICOM input and output: series and study folders to volumes, ophthalmic photographs to RGB, DICOM SEG, SR and
Secondary Capture of the results, coded concepts, and the test-data converters.

SEG/SR/SC writing needs highdicom, an optional import: this package imports without it (MONAI Label's environment),
and the writers name the missing package when called."""

from __future__ import annotations

import importlib

from .codes import (
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    UCUM_ALIASES,
    UCUM_MEANINGS,
    MeasurementCode,
    SegmentCode,
    concept_key,
    generic_measurement_codes,
    measurement_code,
    measurement_codes,
    parse_code,
    private_code,
    private_scheme_identification,
    segment_code,
    segment_codes,
    ucum_unit,
)
from .frames import (
    frame_planes,
    frame_positions,
    has_geometry,
    is_multiframe_volume,
    mask_to_source_frames,
    sort_source_datasets,
)
from .photo import PHOTO_SOP_CLASSES, DicomPhotoReader, read_photo, read_photo_dataset
from .sc import NOT_FOR_DIAGNOSIS, key_frames, render_capture, write_secondary_captures
from .seg import MANUFACTURER, algorithm_identification, segment_descriptions, write_segmentation
from .series import (
    MULTIFRAME_VOLUME_SOP_CLASSES,
    NON_IMAGE_SOP_CLASSES,
    DicomSeries,
    DicomSeriesReader,
    list_dicom_files,
    read_series,
    series_geometry,
)
from .sr import procedure_code, write_measurement_report
from .study import (
    DEFAULT_MODALITY_RULES,
    ModalityRule,
    StudySeries,
    find_study_series,
    holds_dicom,
    map_study_modalities,
    parse_modality_rules,
    read_study,
)

# names of the modules that are also commands (``python -m common.dicom.<module>``), imported on first use so
# that running such a module does not import it twice
_COMMAND_EXPORTS = {
    "nifti_case_to_dicom": "write_images",
    "write_mr_series": "write_images",
    "write_photo": "write_images",
}

__all__ = [
    "DEFAULT_MODALITY_RULES",
    "DicomPhotoReader",
    "DicomSeries",
    "DicomSeriesReader",
    "MANUFACTURER",
    "MULTIFRAME_VOLUME_SOP_CLASSES",
    "MeasurementCode",
    "ModalityRule",
    "NON_IMAGE_SOP_CLASSES",
    "NOT_FOR_DIAGNOSIS",
    "PHOTO_SOP_CLASSES",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "SegmentCode",
    "StudySeries",
    "UCUM_ALIASES",
    "UCUM_MEANINGS",
    "algorithm_identification",
    "concept_key",
    "find_study_series",
    "frame_planes",
    "frame_positions",
    "generic_measurement_codes",
    "has_geometry",
    "holds_dicom",
    "is_multiframe_volume",
    "key_frames",
    "list_dicom_files",
    "map_study_modalities",
    "mask_to_source_frames",
    "measurement_code",
    "measurement_codes",
    "nifti_case_to_dicom",
    "parse_code",
    "parse_modality_rules",
    "private_code",
    "private_scheme_identification",
    "procedure_code",
    "read_photo",
    "read_photo_dataset",
    "read_series",
    "read_study",
    "render_capture",
    "segment_code",
    "segment_codes",
    "segment_descriptions",
    "series_geometry",
    "sort_source_datasets",
    "ucum_unit",
    "write_measurement_report",
    "write_mr_series",
    "write_photo",
    "write_secondary_captures",
    "write_segmentation",
]


def __getattr__(name: str):
    """Import a name of :data:`_COMMAND_EXPORTS` on first use (PEP 562)."""
    if name in _COMMAND_EXPORTS:
        return getattr(importlib.import_module(f".{_COMMAND_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
