"""Read DICOM colour photographs (ophthalmic photography, VL photographic, secondary capture) as RGB uint8.

Photometric interpretations RGB, YBR_FULL, YBR_FULL_422 (converted with pydicom's colour-space conversion) and
MONOCHROME1/2 (replicated to three channels) are read, uncompressed or in any transfer syntax pydicom can decode
here (JPEG baseline/JPEG 2000 through Pillow, JPEG-LS and lossless JPEG through python-gdcm; 12-bit JPEG extended
and HTJ2K have no decoder installed: such files raise a :class:`~common.errors.DatasetError` naming the
transfer syntax).

:class:`DicomPhotoReader` is a MONAI ``ImageReader`` for ``LoadImaged``: ``.dcm`` files give the layout of
``monai.data.PILReader(reverse_indexing=False)`` (rows vertical), other files go to a ``PILReader``.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader, PILReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DatasetError
from .series import NON_IMAGE_SOP_CLASSES

__all__ = ["DicomPhotoReader", "PHOTO_SOP_CLASSES", "read_photo", "read_photo_dataset"]

#: SOP classes read as photographs (others with 8-bit pixel data are read too, these are the expected ones).
PHOTO_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}

_SUPPORTED_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME1", "MONOCHROME2")


def read_photo_dataset(ds: Dataset, path: str | PathLike | None = None) -> np.ndarray:
    """The RGB uint8 array ``(H, W, 3)`` of a decoded-in-memory DICOM photograph.

    Args:
        ds: the dataset (with pixel data).
        path: its file, named in errors.

    Raises:
        DatasetError: not an image, several frames, not 8 bits, an unsupported photometric interpretation, or
            pixel data that cannot be decoded (naming the transfer syntax UID).
    """
    where = f"file {path}" if path is not None else "DICOM photograph"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in NON_IMAGE_SOP_CLASSES or "PixelData" not in ds:
        kind = NON_IMAGE_SOP_CLASSES.get(sop_class, f"SOP class {sop_class or 'unknown'} without pixel data")
        raise DatasetError(f"{where}: not a photograph but a non-image object ({kind}).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DatasetError(f"{where}: {frames} frames; a photograph must have one frame.")
    if int(ds.get("BitsAllocated", 0)) != 8:
        raise DatasetError(f"{where}: BitsAllocated {ds.get('BitsAllocated')}; expected an 8-bit photograph.")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise DatasetError(f"{where}: PhotometricInterpretation '{photometric}' is not supported "
                           f"(supported: {', '.join(_SUPPORTED_PHOTOMETRIC)}).")
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
    try:
        # pydicom >= 3 converts YBR_FULL / YBR_FULL_422 to RGB (pydicom.pixels.convert_color_space) with as_rgb.
        pixels = _decode_rgb(ds, photometric)
    except Exception as err:  # NotImplementedError / RuntimeError / ValueError depending on the decoder plugin
        name = getattr(syntax, "name", "")
        raise DatasetError(f"{where}: pixel data cannot be decoded (transfer syntax {syntax}"
                           f"{f' {name}' if name and name != str(syntax) else ''}): {err}") from err
    if pixels.ndim == 2:
        if photometric == "MONOCHROME1":
            pixels = np.iinfo(np.uint8).max - pixels
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DatasetError(f"{where}: unexpected pixel array shape {pixels.shape} for a photograph.")
    return np.ascontiguousarray(pixels.astype(np.uint8, copy=False))


def _decode_rgb(ds: Dataset, photometric: str) -> np.ndarray:
    """Pixel data as RGB where colour: pydicom >= 3's ``pixels`` API, or pydicom 2's ``pixel_array`` plus its colour
    conversion (the MONAI Label environment has pydicom < 3)."""
    if hasattr(pydicom, "pixels"):
        return pydicom.pixels.pixel_array(ds, as_rgb=True)
    from pydicom.pixel_data_handlers.util import convert_color_space

    pixels = ds.pixel_array
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed if hasattr(ds, "file_meta") else False
    if pixels.ndim == 3 and photometric.startswith("YBR") and not compressed:  # decoders convert compressed YBR
        pixels = convert_color_space(pixels, photometric, "RGB")
    return pixels


def read_photo(path: str | PathLike) -> np.ndarray:
    """Read a DICOM photograph file as RGB uint8 ``(H, W, 3)``, rows top to bottom.

    Raises:
        DatasetError: missing or non-DICOM file, or see :func:`read_photo_dataset`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file {path}: DICOM photograph does not exist.")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError) as err:
        raise DatasetError(f"file {path}: not a readable DICOM file ({err}).") from err
    return read_photo_dataset(ds, path)


class _Photo:
    def __init__(self, rgb: np.ndarray | None, ds: Dataset | None, error: Exception | None = None):
        self.rgb, self.ds, self.error = rgb, ds, error


class DicomPhotoReader(ImageReader):
    """A MONAI image reader giving DICOM photographs the layout of ``PILReader``; other files go to ``PILReader``.

    With ``reverse_indexing=False`` the array is ``(H, W, 3)`` (rows vertical), ``original_channel_dim`` -1 and
    ``spatial_shape`` ``(H, W)``: after ``EnsureChannelFirst`` it is ``(3, H, W)``, like
    ``PILReader(reverse_indexing=False)`` on the same picture saved as PNG. Use in a config:
    ``"reader": "$common.dicom.DicomPhotoReader(reverse_indexing=False)"``.

    A :class:`DatasetError` from a bad ``.dcm`` file is raised by ``get_data`` so that ``LoadImage`` reports it.

    Args:
        reverse_indexing: as ``PILReader``: True swaps rows and columns (``(W, H, 3)``).
        fallback: reader for non-DICOM files (default ``PILReader(reverse_indexing=reverse_indexing, **kwargs)``).
    """

    def __init__(self, reverse_indexing: bool = True, fallback: ImageReader | None = None, **kwargs):
        super().__init__()
        self.reverse_indexing = reverse_indexing
        self.fallback = fallback if fallback is not None else PILReader(reverse_indexing=reverse_indexing, **kwargs)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        names = ensure_tuple(filename)
        return all(str(f).lower().endswith(".dcm") for f in names) or self.fallback.verify_suffix(filename)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        names = ensure_tuple(data)
        if not all(str(f).lower().endswith(".dcm") for f in names):
            return self.fallback.read(data, **kwargs)
        photos = []
        for name in names:
            try:
                ds = pydicom.dcmread(name)
                photos.append(_Photo(read_photo_dataset(ds, name), ds))
            except (DatasetError, InvalidDicomError, OSError, EOFError) as err:
                if not isinstance(err, DatasetError):
                    err = DatasetError(f"file {name}: not a readable DICOM file ({err}).")
                photos.append(_Photo(None, None, err))
        return photos if len(photos) > 1 else photos[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = ensure_tuple(img)
        if not all(isinstance(i, _Photo) for i in items):
            return self.fallback.get_data(img)
        arrays, compatible_meta = [], {}
        for item in items:
            if item.error is not None:
                raise item.error
            data = np.moveaxis(item.rgb, 0, 1) if self.reverse_indexing else item.rgb
            header = {
                MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[:2]),
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1,
                "SOPInstanceUID": str(item.ds.get("SOPInstanceUID", "")),
                "StudyInstanceUID": str(item.ds.get("StudyInstanceUID", "")),
                "Modality": str(item.ds.get("Modality", "")),
            }
            arrays.append(data)
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta
