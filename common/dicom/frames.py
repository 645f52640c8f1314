"""Align masks computed in a volume's voxel grid with the frames of the source DICOM images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "frame_planes",
    "frame_positions",
    "has_geometry",
    "is_multiframe_volume",
    "mask_to_source_frames",
    "sort_source_datasets",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def has_geometry(ds: Dataset) -> bool:
    """Whether ``ds`` carries the image plane geometry (position, orientation and pixel spacing)."""
    return all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))


def is_multiframe_volume(ds: Dataset) -> bool:
    """Whether ``ds`` is a multi-frame image whose frames carry their plane geometry in functional groups
    (Enhanced / Legacy Converted Enhanced MR and CT)."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds


def _group_item(ds: Dataset, frame: Dataset, sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence`` for one frame: per-frame, else shared."""
    for groups in (frame, ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]):
        if sequence in groups and len(groups[sequence].value) > 0:
            return groups[sequence][0]
    return None


def frame_planes(ds: Dataset) -> list[Dataset]:
    """One small dataset per frame of a multi-frame volume (file frame order) with the plane attributes a single-frame
    slice has: ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns.

    Raises:
        ValueError: a frame lacks its position, orientation or pixel spacing.
    """
    planes = []
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = _group_item(ds, frame, "PlanePositionSequence")
        orientation = _group_item(ds, frame, "PlaneOrientationSequence")
        measures = _group_item(ds, frame, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None or "PixelSpacing" not in measures:
            raise ValueError(
                f"frame {k + 1} of {ds.get('SOPInstanceUID', '?')} lacks its plane position, orientation or pixel "
                "spacing (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence)."
            )
        plane = Dataset()
        plane.ImagePositionPatient = position.ImagePositionPatient
        plane.ImageOrientationPatient = orientation.ImageOrientationPatient
        plane.PixelSpacing = measures.PixelSpacing
        plane.Rows, plane.Columns = ds.Rows, ds.Columns
        planes.append(plane)
    return planes


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return np.cross(iop[:3], iop[3:])


def sort_source_datasets(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source images sorted by slice position along the slice normal (the order of SEG frames and masks).

    A single image, or images without plane geometry (photographs), keep their order.

    Raises:
        ValueError: ``datasets`` is empty, or mixes images with and without geometry.
    """
    if len(datasets) == 0:
        raise ValueError("source_datasets is empty.")
    with_geometry = [has_geometry(ds) for ds in datasets]
    if not any(with_geometry):
        return list(datasets)
    if not all(with_geometry):
        raise ValueError(
            f"source_datasets of series {datasets[0].get('SeriesInstanceUID', '?')} mix images with and without "
            "ImagePositionPatient/ImageOrientationPatient/PixelSpacing."
        )
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal))


def frame_positions(ds: Dataset) -> np.ndarray:
    """LPS coordinates (mm) of every pixel centre of ``ds``, shape ``(Rows, Columns, 3)``."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    rows, cols = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    return (
        origin
        + cols[..., None] * col_spacing * iop[:3]  # along a row: the row direction cosines
        + rows[..., None] * row_spacing * iop[3:]  # down a column: the column direction cosines
    )


def mask_to_source_frames(
    mask: np.ndarray, affine: np.ndarray | None, source_datasets: Sequence[Dataset]
) -> np.ndarray:
    """Resample ``mask`` onto the source images' pixels (nearest neighbour): one frame per source image.

    Each source pixel centre is mapped through the DICOM geometry (LPS) to RAS world coordinates and, by the
    inverse of ``affine`` (MONAI/NIfTI convention, voxel -> RAS mm), to the nearest voxel of ``mask``; pixels that
    fall outside the mask are 0. A mask in the source grid thus comes back exactly, in any axis order or flip.
    For 2-D images without geometry (photographs), ``mask`` must be ``(Rows, Columns)`` and is used as it is.

    Args:
        mask: label or binary mask, ``(X, Y, Z)`` (a leading channel of size 1 is dropped) or ``(H, W)`` for photos.
        affine: the mask's 4x4 voxel-to-RAS affine (ignored for photos).
        source_datasets: the source images (any order).

    Returns:
        ``(n_frames, Rows, Columns)`` array of ``mask``'s dtype, frames ordered as :func:`sort_source_datasets`
        (for one multi-frame volume source: its frames in file order).

    Raises:
        ValueError: the mask's shape or the affine does not fit the source.
    """
    mask = np.asarray(mask)
    sources = sort_source_datasets(source_datasets)
    if len(sources) == 1 and is_multiframe_volume(sources[0]):
        sources = frame_planes(sources[0])  # one frame each, in the file's frame order (the SEG's frame order)
    first = sources[0]
    if not has_geometry(first):
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != (int(first.Rows), int(first.Columns)) or len(sources) != 1:
            raise ValueError(
                f"mask of shape {mask.shape} does not fit the {len(sources)} image(s) without plane geometry of series "
                f"{first.get('SeriesInstanceUID', '?')} (expected one image of {first.Rows}x{first.Columns})."
            )
        return mask[None].copy()
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (X, Y, Z) for a series with geometry, got shape {mask.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be an invertible 4x4 matrix, got {affine.tolist()}.")
    world_to_voxel = np.linalg.inv(affine)
    frames = np.zeros((len(sources), int(first.Rows), int(first.Columns)), dtype=mask.dtype)
    dims = np.asarray(mask.shape)
    for k, ds in enumerate(sources):
        ras = frame_positions(ds) @ _LPS_TO_RAS.T
        ijk = ras @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        idx = np.rint(ijk).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < dims), axis=-1)
        frames[k][inside] = mask[idx[inside][:, 0], idx[inside][:, 1], idx[inside][:, 2]]
    return frames
