"""Loading and checking a case's volumes, and cutting them into 2-D axial slices with slice-level labels.

Brain-free rule (see :func:`brain_mask`): a voxel is *brain* when, in at least one modality, its in-plane 5x5 mean
intensity exceeds ``min + threshold * (p99.5 - min)`` of that modality's volume (``p99.5`` taken over the voxels
above the minimum). The minimum is the background level of both kinds of data: BraTS volumes z-scored inside the
brain have a constant background equal to their minimum, and uint8 scans (TCGA-LGG) a noisy background of a few
grey levels above 0 that the smoothing averages out. A slice is *brain-free* and dropped when its fraction of brain
pixels is below ``min_brain_fraction``; the segmentation is never used for the decision, so the same slices are
kept with or without labels.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..dicom.series import read_series
from ..errors import DatasetError, case_error, read_error

__all__ = [
    "DEFAULT_MIN_BRAIN_FRACTION",
    "UNKNOWN_LABEL",
    "brain_mask",
    "build_slice_dataset",
    "extract_axial_slices",
    "load_case_volumes",
    "normalize_intensity",
]

#: Slice label of a case without segmentation: unknown (skipped by losses and metrics).
UNKNOWN_LABEL = -1

#: Default share of brain pixels below which a slice counts as brain-free (see :func:`extract_axial_slices`).
DEFAULT_MIN_BRAIN_FRACTION = 0.01


def _case_id(record: dict) -> str:
    """Case id of a record: its ``"case"`` key, else the name of its first image file."""
    if record.get("case"):
        return str(record["case"])
    first = _image_paths(record)[0]
    return Path(first).name.split(".nii")[0]


def _image_paths(record: dict) -> list[str]:
    """The record's image file(s) as a list."""
    images = record.get("image")
    if not images:
        raise DatasetError(f"record {record!r} has no 'image' file(s).")
    if isinstance(images, (str, Path)):
        return [str(images)]
    # A DICOM series given as a list of its files (see common.dicom.study) stays one entry.
    return [str(p) if isinstance(p, (str, Path)) else [str(f) for f in p] for p in images]


def _load_volume(path: str | list[str], case: str) -> np.ndarray:
    """Read one 3-D NIfTI volume (or DICOM series folder/files) as float32, reoriented to closest canonical (RAS)."""
    try:
        if isinstance(path, list) or Path(path).is_dir():
            series = read_series(path)
            img = nib.Nifti1Image(series.volume, series.affine)
        else:
            img = nib.load(path)
        shape = tuple(img.shape)
    except DatasetError:  # a bad DICOM series: the message already names the series and the file
        raise
    except Exception as err:  # nibabel raises many types for corrupt files (ImageFileError, OSError, EOFError...)
        raise read_error(case, path, err) from err
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise case_error(case, path, f"is {len(shape)}-D with shape {shape}; expected a 3-D volume.")
    try:
        data = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
    except Exception as err:  # nibabel reads the voxels (and finds a truncated file) only here
        raise read_error(case, path, err) from err
    n_nan = int(np.isnan(data).sum())
    if n_nan:
        raise case_error(case, path, f"holds {n_nan} NaN voxel(s).")
    n_inf = int(np.isinf(data).sum())
    if n_inf:
        raise case_error(case, path, f"holds {n_inf} infinite voxel(s).")
    return data


def load_case_volumes(
    record: dict, label_values: Collection[int] | None = None, check_seg: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and check the image channels and segmentation of one case.

    Volumes are reoriented to the closest canonical (RAS) orientation, so axis 2 is the axial (inferior to
    superior) axis. A trailing singleton axis (X, Y, Z, 1) is dropped.

    Args:
        record: ``{"case": id, "image": [paths], "seg": path or None}`` (from ``build_brats_datalist``).
        label_values: allowed segmentation labels (e.g. ``(0, 1, 2, 4)``); ``None`` allows any integer.
        check_seg: read and check the segmentation (integer labels, shape, ``label_values``); when False it is
            not read and ``None`` is returned for it.

    Returns:
        ``(image, seg)``: image float32 ``(C, X, Y, Z)`` in the record's modality order, seg int32 ``(X, Y, Z)``
        or ``None`` when the record has none.

    Raises:
        DatasetError: unreadable file, not 3-D, NaN or infinite voxels, shapes differing between modalities or
            from the segmentation, non-integer labels or labels outside ``label_values``; the message names the
            case and the file.
    """
    case = _case_id(record)
    paths = _image_paths(record)
    channels = []
    for path in paths:
        data = _load_volume(path, case)
        if channels and data.shape != channels[0].shape:
            raise case_error(
                case, path, f"shape {data.shape} differs from shape {channels[0].shape} of {Path(str(paths[0])).name}."
            )
        channels.append(data)
    image = np.stack(channels)

    seg_path = record.get("seg")
    if not check_seg or seg_path is None:
        return image, None
    seg_path = str(seg_path)
    seg = _load_volume(seg_path, case)
    if seg.shape != image.shape[1:]:
        raise case_error(
            case,
            seg_path,
            f"segmentation shape {seg.shape} differs from image shape {image.shape[1:]} of {Path(str(paths[0])).name}.",
        )
    if not np.array_equal(seg, np.round(seg)):
        raise case_error(case, seg_path, "segmentation holds non-integer values.")
    seg = seg.astype(np.int32)
    if label_values is not None:
        present = np.unique(seg)
        bad = sorted(int(v) for v in set(present.tolist()) - {int(v) for v in label_values})
        if bad:
            counts = {v: int((seg == v).sum()) for v in bad}
            raise case_error(
                case,
                seg_path,
                f"segmentation labels {bad} are outside the allowed labels "
                f"{sorted(int(v) for v in label_values)} (voxel counts {counts}).",
            )
    return image, seg


def _box_mean_2d(volume: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` in-plane window (axes 0 and 1) of an (X, Y, Z) volume, edges replicated."""
    radius = size // 2
    padded = np.pad(volume.astype(np.float64), ((radius + 1, radius), (radius + 1, radius), (0, 0)), mode="edge")
    padded[0], padded[:, 0] = 0.0, 0.0  # a zero row and column in front turn cumulative sums into window sums
    total = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    sums = total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]
    return (sums / float(size * size)).astype(np.float32)


def brain_mask(image: np.ndarray, threshold: float = 0.1, smooth: int = 5) -> np.ndarray:
    """Brain (head) voxels of a ``(C, X, Y, Z)`` image: above background in at least one channel.

    Per channel, a voxel is above background when its in-plane ``smooth`` x ``smooth`` mean exceeds
    ``min + threshold * (p99.5 - min)``, where ``min`` is the channel's volume minimum and ``p99.5`` the 99.5th
    percentile of its voxels above the minimum. A constant channel has no brain voxels.

    Args:
        image: ``(C, X, Y, Z)`` volume.
        threshold: fraction of the channel's robust intensity range above its minimum.
        smooth: odd in-plane window size of the mean filter (1: none), which suppresses background noise.

    Returns:
        Boolean ``(X, Y, Z)`` mask.
    """
    if smooth < 1 or smooth % 2 == 0:
        raise ValueError(f"smooth must be an odd number >= 1, got {smooth}.")
    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        low = float(channel.min())
        above = channel[channel > low]
        if above.size == 0:
            continue
        level = low + threshold * (float(np.percentile(above, 99.5)) - low)
        smoothed = _box_mean_2d(channel, smooth) if smooth > 1 else channel
        mask |= smoothed > level
    return mask


def normalize_intensity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score each channel of a ``(C, X, Y, Z)`` image with the mean and std of its voxels inside ``mask``.

    The whole volume (background included) is shifted and scaled; with an empty mask the statistics of the whole
    channel are used, and a zero std is replaced by 1.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c, channel in enumerate(image):
        values = channel[mask] if mask.any() else channel.ravel()
        mean = float(values.mean(dtype=np.float64))
        std = float(values.std(dtype=np.float64))
        out[c] = (channel - mean) / (std if std > 1e-8 else 1.0)
    return out


def extract_axial_slices(
    record: dict,
    label_values: Collection[int] | None = None,
    min_brain_fraction: float = DEFAULT_MIN_BRAIN_FRACTION,
    min_tumour_pixels: int = 1,
    normalize: bool = True,
    intensity_threshold: float = 0.1,
) -> list[dict]:
    """Cut one case into axial slices, dropping brain-free ones (see the module docstring for the rule).

    Args:
        record: a datalist record (see :func:`load_case_volumes`).
        label_values: allowed segmentation labels, checked on load.
        min_brain_fraction: a slice is kept when the fraction of its pixels that are brain (:func:`brain_mask`)
            is at least this; 0 keeps every slice.
        min_tumour_pixels: a slice is labelled 1 when it has at least this many tumour (label > 0) pixels.
        normalize: z-score each channel over the brain voxels of the whole volume (:func:`normalize_intensity`).
        intensity_threshold: ``threshold`` of :func:`brain_mask`.

    Returns:
        Per kept slice, in increasing ``z``: ``{"image": float32 (C, X, Y), "seg": uint8 (1, X, Y) binary
        (any label > 0), "label": 0 or 1, "case": id, "slice": z}``; without a segmentation ``"seg"`` is left
        out and ``"label"`` is :data:`UNKNOWN_LABEL` (-1), so labelled and unlabelled cases batch together.
    """
    if not 0.0 <= min_brain_fraction <= 1.0:
        raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}.")
    if min_tumour_pixels < 1:
        raise ValueError(f"min_tumour_pixels must be >= 1, got {min_tumour_pixels}.")
    case = _case_id(record)
    image, seg = load_case_volumes(record, label_values=label_values, check_seg=True)
    mask = brain_mask(image, threshold=intensity_threshold)
    if normalize:
        image = normalize_intensity(image, mask)
    fractions = mask.mean(axis=(0, 1))
    samples = []
    for z in np.flatnonzero(fractions >= min_brain_fraction):
        sample = {"image": np.ascontiguousarray(image[..., z]), "case": case, "slice": int(z)}
        if seg is not None:
            tumour = seg[..., z] > 0
            sample["seg"] = tumour[None].astype(np.uint8)
            sample["label"] = int(tumour.sum() >= min_tumour_pixels)
        else:
            sample["label"] = UNKNOWN_LABEL
        samples.append(sample)
    return samples


def build_slice_dataset(records: Sequence[dict], **kwargs) -> list[dict]:
    """Axial slices of many cases (:func:`extract_axial_slices` keyword arguments apply to each).

    When a record carries a DICOM source (``"dicom_series"``, a series folder), every slice gets that key too
    (``""`` for the cases without one), for the DICOM result writer.

    Raises:
        DatasetError: no records, or no slice kept from any case (names the folder(s) and cases).
    """
    if not records:
        raise DatasetError("no records given: the data set or split is empty.")
    samples: list[dict] = []
    any_dicom = any(r.get("dicom_series") for r in records)
    for record in records:
        source = record.get("dicom_series")
        for sample in extract_axial_slices(record, **kwargs):
            if any_dicom:
                # the DICOM output's source series, kept per slice ("" for a NIfTI case: it batches with the others)
                sample["dicom_series"] = source if isinstance(source, str) else ""
            samples.append(sample)
    if not samples:
        cases = [_case_id(r) for r in records]
        folders = sorted({str(Path(_image_paths(r)[0]).parent) for r in records})
        shown = cases if len(cases) <= 10 else [*cases[:10], f"... ({len(cases)} in all)"]
        min_fraction = kwargs.get("min_brain_fraction", DEFAULT_MIN_BRAIN_FRACTION)
        raise DatasetError(
            f"no slices kept from cases {shown} in {folders}: every slice was brain-free "
            f"(min_brain_fraction={min_fraction}); check that the images are not blank."
        )
    return samples
