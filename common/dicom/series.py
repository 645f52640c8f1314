"""Read one MR/CT DICOM series (a folder or a list of files) into a volume with a RAS affine, checking its geometry.

The volume is indexed ``(X, Y, Z)`` = (column, row, slice) and the affine maps those indices to RAS world
coordinates, as MONAI's ``ITKReader``/``PydicomReader`` (``affine_lps_to_ras=True``) and NIfTI files give them, so
``Orientationd``/``Invertd`` and NIfTI writers work unchanged. Slices are sorted by their position along the slice
normal (``ImagePositionPatient . (row cosine x column cosine)``), not by file name or InstanceNumber.

Problems raise one :class:`~common.errors.DatasetError` naming the series folder (and the file where one is to
blame): empty folder, DICOM files of several series, non-image objects (SR, SEG, ...), multi-frame images other than
one enhanced MR/CT volume, mixed orientations or in-plane geometry, duplicated slices, missing slices (a gap > 1.5 x
the median spacing), otherwise inconsistent spacing, pixel data that cannot be decoded (the transfer syntax UID is
named), NaN/infinite voxels.
Files that are not DICOM at all (``README.txt``, ``.DS_Store``, a DICOMDIR) are skipped with a logged warning.

A series may also be one multi-frame file of an Enhanced or Legacy Converted Enhanced MR/CT image (what current
scanners export): its frames are placed by their per-frame positions with highdicom and must form one regularly
spaced stack (several stacks, time points or b-values in one file are an error naming the file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader, NibabelReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DatasetError

__all__ = [
    "DicomSeries",
    "DicomSeriesReader",
    "MULTIFRAME_VOLUME_SOP_CLASSES",
    "NON_IMAGE_SOP_CLASSES",
    "list_dicom_files",
    "read_series",
    "series_geometry",
]

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: SOP classes that are never image slices (structured reports, SEG, RT structures, presentation states, ...).
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
}

#: Multi-frame SOP classes read as one volume (frames placed by their per-frame functional groups).
MULTIFRAME_VOLUME_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image",
}

# Tolerances: direction cosines, in-plane spacing (relative), slice positions (relative to the median spacing).
_COSINE_TOL = 1e-4
_SPACING_RTOL = 1e-3
_DUPLICATE_RTOL = 1e-3
_GAP_FACTOR = 1.5
_UNEVEN_RTOL = 0.05


def _where(folder: Path | None) -> str:
    return f"series {folder}" if folder is not None else "series"


def list_dicom_files(source: str | PathLike | Sequence[str | PathLike]) -> tuple[list[tuple[Path, Dataset]], Path]:
    """The DICOM files of a folder (searched recursively) or of a list of files, with their headers.

    Hidden files and files that are not DICOM are skipped with a warning.

    Args:
        source: a folder, or a list of files (their common parent names the series in messages).

    Returns:
        ``([(path, header without pixel data), ...] sorted by path, folder)``.

    Raises:
        DatasetError: the folder does not exist or holds no DICOM file.
    """
    if isinstance(source, (str, PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise DatasetError(f"{_where(folder)}: folder does not exist.")
        paths = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    else:
        paths = sorted(Path(p) for p in source)
        if not paths:
            raise DatasetError("series: empty list of files.")
        folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
    found, skipped = [], []
    for path in paths:
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            skipped.append(path)
            continue
        try:
            header = pydicom.dcmread(path, defer_size=1024)  # pixel data present but not read
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped.append(path)
            continue
        found.append((path, header))
    if skipped:
        logger.warning("%s: skipped %d file(s) that are not DICOM: %s", _where(folder), len(skipped),
                       ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not found:
        raise DatasetError(f"{_where(folder)}: no DICOM files found (empty folder, or only non-DICOM files).")
    return found, folder


def _check_one_image_series(files: list[tuple[Path, Dataset]], folder: Path) -> None:
    """Raise when the files hold several series, non-image objects or multi-frame images."""
    series: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    for path, ds in files:
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, []).append(path)
        descriptions.setdefault(uid, str(ds.get("SeriesDescription", "")))
    if len(series) > 1:
        listed = "; ".join(
            f"{uid or '<no SeriesInstanceUID>'} ('{descriptions[uid]}', {len(p)} files, e.g. {p[0].name})"
            for uid, p in series.items()
        )
        raise DatasetError(f"{_where(folder)}: files of {len(series)} series in one series folder: {listed}. "
                           "Put each series in its own folder (or read the parent as a study).")
    for path, ds in files:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in NON_IMAGE_SOP_CLASSES or "PixelData" not in ds and "FloatPixelData" not in ds:
            kind = NON_IMAGE_SOP_CLASSES.get(sop_class, f"SOP class {sop_class or 'unknown'} without pixel data")
            raise DatasetError(f"{_where(folder)}, file {path}: a non-image object ({kind}) in an image series folder.")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            if sop_class not in MULTIFRAME_VOLUME_SOP_CLASSES:
                raise DatasetError(
                    f"{_where(folder)}, file {path}: multi-frame image ({ds.NumberOfFrames} frames, SOP class "
                    f"{sop_class}); supported are single-frame MR/CT slices and one multi-frame "
                    f"{' / '.join(MULTIFRAME_VOLUME_SOP_CLASSES.values())} file per series."
                )
            if len(files) > 1:
                raise DatasetError(
                    f"{_where(folder)}, file {path}: a multi-frame image together with {len(files) - 1} other file(s) "
                    "of the same series; expected one multi-frame file or single-frame slices only."
                )
            continue
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds or ds[tag].VM == 0:
                raise DatasetError(f"{_where(folder)}, file {path}: missing {tag}; not a cross-sectional image slice.")


def series_geometry(
    files: list[tuple[Path, Dataset]], folder: Path | None = None
) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """Sort the slices of one series along the slice normal, check their geometry, and compute the RAS affine.

    Args:
        files: ``(path, header)`` of every slice of one series.
        folder: the series folder, named in errors.

    Returns:
        ``(sorted files, 4x4 affine)``; the affine maps ``(column, row, slice)`` indices to RAS millimetres.

    Raises:
        DatasetError: mixed orientations, rows/columns or pixel spacing; duplicated or missing slices;
            inconsistent slice spacing.
    """
    first_path, first = files[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)  # (between rows, between columns)
    shape = (int(first.Rows), int(first.Columns))
    for path, ds in files[1:]:
        other = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if np.max(np.abs(other - iop)) > _COSINE_TOL:
            raise DatasetError(f"{_where(folder)}: mixed orientations: {first_path.name} has ImageOrientationPatient "
                               f"{iop.round(5).tolist()}, {path.name} has {other.round(5).tolist()}.")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DatasetError(f"{_where(folder)}: mixed image sizes: {first_path.name} is {shape[0]}x{shape[1]}, "
                               f"{path.name} is {ds.Rows}x{ds.Columns} (rows x columns).")
        other_spacing = np.asarray(ds.PixelSpacing, dtype=np.float64)
        if np.max(np.abs(other_spacing - spacing)) > _SPACING_RTOL * np.max(spacing):
            raise DatasetError(f"{_where(folder)}: inconsistent pixel spacing: {first_path.name} has PixelSpacing "
                               f"{spacing.tolist()}, {path.name} has {other_spacing.tolist()}.")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DatasetError(f"{_where(folder)}, file {first_path}: ImageOrientationPatient {iop.tolist()} does not "
                           "hold two orthogonal unit vectors.")
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in files])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    files = [files[i] for i in order]
    positions, distance = positions[order], distance[order]

    if len(files) > 1:
        steps = np.diff(distance)
        median = float(np.median(steps))
        tol = _DUPLICATE_RTOL * max(median, float(np.max(spacing)))
        dup = np.flatnonzero(steps <= tol)
        if dup.size:
            i = int(dup[0])
            raise DatasetError(f"{_where(folder)}: duplicated slices: {files[i][0].name} and {files[i + 1][0].name} "
                               f"are both at position {distance[i]:.3f} mm along the slice normal "
                               f"({dup.size} duplicate(s) in all).")
        gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
        if gaps.size:
            i = int(gaps[0])
            missing = int(round(steps[i] / median)) - 1
            raise DatasetError(f"{_where(folder)}: missing slices: a gap of {steps[i]:.3f} mm between "
                               f"{files[i][0].name} and {files[i + 1][0].name} where the slice spacing is "
                               f"{median:.3f} mm (about {max(missing, 1)} slice(s) missing, {gaps.size} gap(s)).")
        uneven = np.flatnonzero(np.abs(steps - median) > _UNEVEN_RTOL * median)
        if uneven.size:
            i = int(uneven[0])
            raise DatasetError(f"{_where(folder)}: inconsistent slice spacing: {steps[i]:.3f} mm between "
                               f"{files[i][0].name} and {files[i + 1][0].name}, median {median:.3f} mm "
                               f"(steps range {steps.min():.3f}-{steps.max():.3f} mm).")
        slice_vec = (positions[-1] - positions[0]) / (len(files) - 1)
    else:
        thickness = float(first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0)
        slice_vec = normal * thickness

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]  # along a row: next column
    lps[:3, 1] = col_cos * spacing[0]  # along a column: next row
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[0]
    return files, _LPS_TO_RAS @ lps


def _decode(path: Path, folder: Path | None) -> tuple[np.ndarray, Dataset]:
    """Pixel values (rescaled, float32, ``(rows, columns)``) and the header without pixel data, of one slice."""
    ds = pydicom.dcmread(path)
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises NotImplementedError/RuntimeError/ValueError depending on the plugin
        name = getattr(syntax, "name", "")
        raise DatasetError(
            f"{_where(folder)}, file {path}: pixel data cannot be decoded (transfer syntax {syntax}"
            f"{f' {name}' if name and name != str(syntax) else ''}): {err}"
        ) from err
    if pixels.ndim != 2:
        raise DatasetError(f"{_where(folder)}, file {path}: expected a single-sample 2D slice, got pixel array "
                           f"shape {pixels.shape} (PhotometricInterpretation {ds.get('PhotometricInterpretation')}).")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            delattr(ds, tag)
    return values, ds


@dataclass
class DicomSeries:
    """One series read by :func:`read_series`.

    Attributes:
        volume: float32 ``(X, Y, Z)`` = (columns, rows, slices), RescaleSlope/Intercept applied.
        affine: 4x4 index-to-RAS matrix (MONAI's / NIfTI's convention).
        datasets: the slice headers (no pixel data), in volume slice order (the SEG/SR source images).
        files: the slice files, in volume slice order.
        folder: the series folder.
    """

    volume: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset] = field(repr=False)
    files: list[Path] = field(repr=False)
    folder: Path

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of every slice, in volume slice order."""
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].get("StudyInstanceUID", ""))


def read_series(source: str | PathLike | Sequence[str | PathLike]) -> DicomSeries:
    """Read one MR/CT series (a folder, searched recursively, or a list of files) and check it.

    Args:
        source: the series folder or its files.

    Returns:
        A :class:`DicomSeries` (volume, RAS affine, sorted headers).

    Raises:
        DatasetError: see the module docstring; the message names the series folder and the file at fault.
    """
    files, folder = list_dicom_files(source)
    _check_one_image_series(files, folder)
    if int(files[0][1].get("NumberOfFrames", 1) or 1) > 1:
        return _read_multiframe(files[0][0], folder)
    files, affine = series_geometry(files, folder)
    slices, headers = [], []
    for path, _ in files:
        values, header = _decode(path, folder)
        slices.append(values)
        headers.append(header)
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, columns, Z) -> (X = columns, Y = rows, Z)
    if not np.all(np.isfinite(volume)):
        bad = int(np.flatnonzero(~np.isfinite(volume).all(axis=(0, 1)))[0])
        raise DatasetError(f"{_where(folder)}, file {files[bad][0]}: NaN or infinite voxel values.")
    return DicomSeries(np.ascontiguousarray(volume), affine, headers, [p for p, _ in files], folder)


def _read_multiframe(path: Path, folder: Path | None) -> DicomSeries:
    """One enhanced MR/CT multi-frame image as a volume, frames sorted along the slice normal as for slices."""
    import highdicom as hd  # here, not at the top: MONAI Label's environment ships common/ without highdicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = header.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(header, "file_meta") else "unknown"
    try:
        # modality rescale as for single-frame slices; real-world value maps (MR) are not applied
        volume = hd.imread(str(path)).get_volume(dtype=np.float32, apply_real_world_transform=False)
    except Exception as err:  # highdicom raises ValueError/RuntimeError; pydicom's decoders several kinds
        raise DatasetError(
            f"{_where(folder)}, file {path}: the multi-frame image ({header.get('NumberOfFrames')} frames, transfer "
            f"syntax {syntax}) cannot be read as one regularly spaced volume: {err}"
        ) from err
    array = volume.array.transpose(2, 1, 0)  # (slices, rows, columns) -> (X = columns, Y = rows, Z = slices)
    lps = volume.affine[:, [2, 1, 0, 3]]
    if np.dot(lps[:3, 2], np.cross(lps[:3, 0], lps[:3, 1])) < 0:  # highdicom may stack the other way round
        array = array[:, :, ::-1]
        lps[:3, 3] += lps[:3, 2] * (array.shape[2] - 1)
        lps[:3, 2] *= -1
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{_where(folder)}, file {path}: NaN or infinite voxel values.")
    return DicomSeries(np.ascontiguousarray(array), _LPS_TO_RAS @ lps, [header], [path], folder)


class _DeferredError:
    """A read failure kept until ``get_data``: ``LoadImage`` would otherwise swallow it and try other readers."""

    def __init__(self, error: Exception):
        self.error = error


def _is_dicom_source(path: str | PathLike) -> bool:
    """A folder, a ``.dcm`` file, or a file with the DICOM preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


class DicomSeriesReader(ImageReader):
    """A MONAI image reader for DICOM series folders that hands every other file to a fallback reader (NIfTI).

    A folder is read with :func:`read_series`, and so is a list of DICOM files (one series: the files of a series
    that shares its folder, as ``common.dicom.study`` lists them); several folders give one channel each. DICOM
    files are recognised by a ``.dcm`` suffix or the ``DICM`` preamble. The array is ``(X, Y, Z)`` with meta
    ``affine``/``original_affine`` (RAS), ``spatial_shape``, ``space`` RAS and ``original_channel_dim``
    ``"no_channel"`` like ``NibabelReader``, plus ``SeriesInstanceUID``, ``StudyInstanceUID``,
    ``SeriesDescription`` and ``Modality``. ``Orientationd``/``Invertd`` then work as for NIfTI. Use in a config:
    ``{"_target_": "LoadImaged", "keys": ..., "reader": "$common.dicom.DicomSeriesReader()"}``.

    A :class:`DatasetError` from a bad series is raised by ``get_data`` (not ``read``), so that ``LoadImage``
    reports it instead of silently trying its other readers.

    Args:
        fallback: reader for non-DICOM paths (default ``NibabelReader(**kwargs)``).
        kwargs: passed to the default fallback.
    """

    def __init__(self, fallback: ImageReader | None = None, **kwargs):
        super().__init__()
        self.fallback = fallback if fallback is not None else NibabelReader(**kwargs)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        names = ensure_tuple(filename)
        return all(_is_dicom_source(f) for f in names) or self.fallback.verify_suffix(filename)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        names = ensure_tuple(data)
        if not all(_is_dicom_source(f) for f in names):
            return self.fallback.read(data, **kwargs)
        folders = [Path(n).is_dir() for n in names]
        # folders: one series each (stacked as channels); files: together one series (a flat study's series)
        sources = list(names) if all(folders) else [list(names)]
        images = []
        for source in sources:
            try:
                if any(folders) and not all(folders):
                    raise DatasetError(f"series {names}: give either series folders or the files of one series, "
                                       "not both.")
                images.append(read_series(source))
            except DatasetError as err:
                images.append(_DeferredError(err))
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = ensure_tuple(img)
        if not all(isinstance(i, (DicomSeries, _DeferredError)) for i in items):
            return self.fallback.get_data(img)
        arrays, compatible_meta = [], {}
        for item in items:
            if isinstance(item, _DeferredError):
                raise item.error
            first = item.datasets[0]
            header = {
                MetaKeys.AFFINE: item.affine.copy(),
                MetaKeys.ORIGINAL_AFFINE: item.affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(item.volume.shape),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
                "SeriesInstanceUID": item.series_instance_uid,
                "StudyInstanceUID": item.study_instance_uid,
                "SeriesDescription": str(first.get("SeriesDescription", "")),
                "Modality": str(first.get("Modality", "")),
            }
            arrays.append(item.volume)
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta
