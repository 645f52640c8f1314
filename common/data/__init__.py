"""Data tools: BraTS-style and fundus datalists, patient-level splits, axial slice extraction and synthetic cases."""

from __future__ import annotations

from .brats import BRATS_MODALITIES, attach_case_labels, build_brats_datalist, read_case_labels
from .errors import DatasetError
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
    "FUNDUS_IMAGE_SUFFIXES",
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
    """Import :func:`generate_brats_like` lazily, so that ``python -m common.data.synthetic`` runs cleanly."""
    if name == "generate_brats_like":
        from .synthetic import generate_brats_like

        return generate_brats_like
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
