"""Data tools: BraTS-style and fundus datalists, risk-factor tables, patient-level splits, axial slices and
synthetic data."""

from __future__ import annotations

import importlib

from ..errors import DatasetError, case_error
from .brats import BRATS_MODALITIES, attach_case_labels, build_brats_datalist, read_case_labels
from .demo import ensure_demo_data
from .factors import (
    FACTOR_KINDS,
    FACTOR_LOSSES,
    FACTOR_STAGES,
    Factor,
    FactorTable,
    factor_pos_weights,
    read_factor_datalist,
)
from .fundus import FUNDUS_IMAGE_SUFFIXES, build_fundus_datalist, list_fundus_images, scan_image_folder
from .label_join import check_label_join
from .slices import (
    DEFAULT_MIN_BRAIN_FRACTION,
    UNKNOWN_LABEL,
    brain_mask,
    build_slice_dataset,
    extract_axial_slices,
    load_case_volumes,
    normalize_intensity,
)
from .split import SPLIT_NAMES, fold_cases, select_split, split_cases, subsample_cases
from .unlabelled import build_unlabelled_datalist

# names of the modules that are also commands (``python -m common.data.<module>``), imported on first use so
# that running such a module does not import it twice
_COMMAND_EXPORTS = {
    "generate_brats_like": "synthetic",
    "SYNTHETIC_FACTORS": "synthetic_cmr",
    "generate_cmr_fundus_like": "synthetic_cmr",
    "generate_fundus_like": "synthetic_fundus",
}

__all__ = [
    "BRATS_MODALITIES",
    "DEFAULT_MIN_BRAIN_FRACTION",
    "FACTOR_KINDS",
    "FACTOR_LOSSES",
    "FACTOR_STAGES",
    "FUNDUS_IMAGE_SUFFIXES",
    "SPLIT_NAMES",
    "SYNTHETIC_FACTORS",
    "UNKNOWN_LABEL",
    "DatasetError",
    "Factor",
    "FactorTable",
    "attach_case_labels",
    "brain_mask",
    "build_brats_datalist",
    "build_fundus_datalist",
    "build_slice_dataset",
    "build_unlabelled_datalist",
    "case_error",
    "check_label_join",
    "ensure_demo_data",
    "extract_axial_slices",
    "factor_pos_weights",
    "fold_cases",
    "generate_brats_like",
    "generate_cmr_fundus_like",
    "generate_fundus_like",
    "list_fundus_images",
    "load_case_volumes",
    "normalize_intensity",
    "read_case_labels",
    "read_factor_datalist",
    "scan_image_folder",
    "select_split",
    "split_cases",
    "subsample_cases",
]


def __getattr__(name: str):
    """Import a name of :data:`_COMMAND_EXPORTS` on first use (PEP 562)."""
    if name in _COMMAND_EXPORTS:
        return getattr(importlib.import_module(f".{_COMMAND_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
