"""Data tools: BraTS-style and fundus datalists, risk-factor tables, patient-level splits, axial slices and
synthetic data."""

from __future__ import annotations

from .brats import BRATS_MODALITIES, attach_case_labels, build_brats_datalist, read_case_labels
from .errors import DatasetError, case_error
from .factors import (
    FACTOR_KINDS,
    FACTOR_LOSSES,
    FACTOR_STAGES,
    IMAGE_EXTENSIONS,
    Factor,
    FactorTable,
    factor_pos_weights,
    list_fundus_images,
    read_factor_datalist,
)
from .fundus import FUNDUS_IMAGE_SUFFIXES, build_fundus_datalist
from .slices import (
    DEFAULT_MIN_BRAIN_FRACTION,
    brain_mask,
    build_slice_dataset,
    extract_axial_slices,
    load_case_volumes,
    normalize_intensity,
)
from .split import SPLIT_NAMES, select_split, split_cases, subsample_cases

__all__ = [
    "BRATS_MODALITIES",
    "DEFAULT_MIN_BRAIN_FRACTION",
    "SPLIT_NAMES",
    "DatasetError",
    "FACTOR_KINDS",
    "FACTOR_LOSSES",
    "FACTOR_STAGES",
    "FUNDUS_IMAGE_SUFFIXES",
    "Factor",
    "FactorTable",
    "IMAGE_EXTENSIONS",
    "case_error",
    "factor_pos_weights",
    "generate_cmr_fundus_like",
    "generate_fundus_like",
    "list_fundus_images",
    "read_factor_datalist",
    "attach_case_labels",
    "brain_mask",
    "build_brats_datalist",
    "build_fundus_datalist",
    "build_slice_dataset",
    "extract_axial_slices",
    "generate_brats_like",
    "load_case_volumes",
    "normalize_intensity",
    "read_case_labels",
    "select_split",
    "split_cases",
    "subsample_cases",
]


def __getattr__(name: str):
    """Import the synthetic generators lazily, so that ``python -m common.data.synthetic*`` runs cleanly."""
    if name == "generate_brats_like":
        from .synthetic import generate_brats_like

        return generate_brats_like
    if name == "generate_fundus_like":
        from .synthetic_fundus import generate_fundus_like

        return generate_fundus_like
    if name == "generate_cmr_fundus_like":
        from .synthetic_cmr import generate_cmr_fundus_like

        return generate_cmr_fundus_like
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
