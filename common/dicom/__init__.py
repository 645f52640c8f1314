"""DICOM input: series and study folders to volumes, ophthalmic photographs to RGB, and test-data converters.

Names are imported lazily (PEP 562) so that ``python -m common.dicom.write_images`` runs without a warning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DicomSeries": "series",
    "DicomSeriesReader": "series",
    "list_dicom_files": "series",
    "read_series": "series",
    "DicomPhotoReader": "photo",
    "read_photo": "photo",
    "read_photo_dataset": "photo",
    "DEFAULT_MODALITY_RULES": "study",
    "ModalityRule": "study",
    "StudySeries": "study",
    "find_study_series": "study",
    "holds_dicom": "study",
    "map_study_modalities": "study",
    "parse_modality_rules": "study",
    "read_study": "study",
    "nifti_case_to_dicom": "write_images",
    "write_mr_series": "write_images",
    "write_photo": "write_images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
