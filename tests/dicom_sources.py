"""Tiny synthetic DICOM sources for the DICOM tests: a 3-D MR series, a colour fundus photograph, and a series
re-encoded as one enhanced (multi-frame) MR image.

The objects are written with pydicom and pass ``dciodvfy`` with 0 errors. The integrator may swap them for the
DICOM input converter's output.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

__all__ = ["MR_SHAPE", "write_enhanced_mr", "write_mr_series", "write_fundus_photo"]

MR_SHAPE = (8, 32, 32)  # slices, rows, columns
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
OPHTHALMIC_PHOTOGRAPHY_8BIT_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def _base(sop_class_uid: str, modality: str, study_uid: str, series_uid: str, number: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime(2024, 1, 2, 10, 30, 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = "MTL MONAI test fixture"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    return ds


def _write(ds: Dataset, path: str) -> None:
    ds.save_as(path, enforce_file_format=True)


def write_mr_series(
    folder: str,
    shape: tuple[int, int, int] = MR_SHAPE,
    spacing: tuple[float, float, float] = (0.9, 1.1, 2.5),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (-14.0, -17.0, -9.0),
    seed: int = 0,
) -> list[str]:
    """Write an axial MR series (one file per slice, shuffled instance order on disk) into ``folder``.

    Args:
        folder: output folder (created).
        shape: (slices, rows, columns).
        spacing: (row spacing, column spacing, slice spacing) in mm.
        orientation: ImageOrientationPatient (row direction, column direction), LPS.
        origin: ImagePositionPatient of the first slice.
        seed: seed of the random pixel values.

    Returns:
        The written file paths, in slice order.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    pixels = rng.integers(0, 1000, size=shape, dtype=np.uint16)
    paths = []
    for k in range(shape[0]):
        ds = _base(MR_IMAGE_STORAGE, "MR", study_uid, series_uid, k + 1)
        position = np.array(origin, float) + k * spacing[2] * normal
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
        ds.SeriesDescription = "AX T1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 15.0, 1
        ds.MagneticFieldStrength = 1.5
        ds.SliceThickness = spacing[2]
        ds.SpacingBetweenSlices = spacing[2]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in orientation]  # DS: <= 16 characters
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceLocation = round(float(position @ normal), 4)
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 500, 1000  # the enhanced MR's Frame VOI LUT macro needs them (type 1)
        ds.PixelData = pixels[k].tobytes()
        path = os.path.join(folder, f"slice_{(k * 5) % shape[0]:03d}_{k:03d}.dcm")
        _write(ds, path)
        paths.append(path)
    return paths


def write_fundus_photo(path: str, size: tuple[int, int] = (48, 64), seed: int = 0) -> str:
    """Write a VL Photographic Image (RGB, 8 bit, XC modality) of a synthetic fundus to ``path``.

    Args:
        path: output file.
        size: (rows, columns).
        seed: seed of the random noise.
    """
    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = np.mgrid[:rows, :cols]
    rgb = np.zeros((rows, cols, 3), np.uint8)
    rgb[..., 0] = 150
    rgb[..., 1] = 60
    disc = (yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 < (rows / 6) ** 2
    rgb[disc] = (240, 220, 160)
    rgb = np.clip(rgb + rng.integers(0, 10, rgb.shape), 0, 255).astype(np.uint8)
    ds = _base(VL_PHOTOGRAPHIC_IMAGE_STORAGE, "XC", generate_uid(), generate_uid(), 1)
    ds.SeriesDescription = "Fundus photograph"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.ImageLaterality = "R"
    ds.PatientOrientation = ""
    ds.AcquisitionContextSequence = []
    ds.BodyPartExamined = "EYE"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "81745001", "SCT", "Eye"
    ds.AnatomicRegionSequence = [region]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = rgb.tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(ds, path)
    return path


def write_enhanced_mr(slice_files: list[str], path: str, series_number: int = 7) -> pydicom.Dataset:
    """The single-frame MR slices ``slice_files`` as one Legacy Converted Enhanced MR multi-frame image at ``path``
    (highdicom's converter; a new series of the same study); returns it as read back. The slices need Window
    Center/Width (:func:`write_mr_series` writes them) for the Frame VOI LUT macro; the result passes dciodvfy."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    image = LegacyConvertedEnhancedMRImage([pydicom.dcmread(f) for f in slice_files],
                                           series_instance_uid=generate_uid(), series_number=series_number,
                                           sop_instance_uid=generate_uid(), instance_number=1)
    # highdicom lists the converted slices in ReferencedSeriesSequence; dciodvfy (dicom3tools) refuses that list
    # where no attribute of the instance references an image ("present but Instance does not reference
    # Instances": the conversion sources of ConversionSourceAttributesSequence do not count), so it is left out.
    if "ReferencedSeriesSequence" in image:
        del image.ReferencedSeriesSequence
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save_as(path)
    return pydicom.dcmread(path)
