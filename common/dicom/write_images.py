"""Write test DICOM data: NIfTI volumes as MR Image Storage series, photographs as Ophthalmic Photography files.

These converters make the DICOM inputs of the tests and demos from ``../shared/data`` and the synthetic data
sets. Every file they write passes ``dciodvfy`` (dicom3tools) with 0 errors.

Command line::

    python -m common.dicom.write_images nifti-case <case folder> <out folder> [--modalities t1 t1ce t2 flair]
    python -m common.dicom.write_images photo <image.png|jpg> <out.dcm> [--laterality R] [--jpeg]
"""

from __future__ import annotations

import argparse
import datetime
import io
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    OphthalmicPhotography8BitImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = ["nifti_case_to_dicom", "write_mr_series", "write_photo"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
_MANUFACTURER = "multitask-mri-bundles"


def _uid(seed: str | None, *parts: object) -> str:
    """A new UID, or (with a ``seed``) a reproducible one derived from the seed and ``parts``."""
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)]) if seed else generate_uid()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_study_series(
    ds: Dataset,
    patient_id: str,
    patient_name: str | None,
    study_uid: str,
    study_id: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    modality: str,
    now: datetime.datetime,
) -> None:
    """Fill the Patient, General Study, General Series and General Equipment modules."""
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name or patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id[:16]
    ds.AccessionNumber = ""
    ds.StudyDescription = f"converted test data {patient_id}"[:64]
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.Manufacturer = _MANUFACTURER
    ds.ContentDate = date
    ds.ContentTime = time
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time


def _ds(value: float, decimals: int = 6) -> str:
    """A Decimal String value: ``decimals`` places, or as many as fit the 16 characters a DS allows."""
    text = f"{float(value):.{decimals}f}"
    return text if len(text) <= 16 else format_number_as_ds(float(value))


def _quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """Stored integer values, slope, intercept and signedness for a volume (exact for integer-valued data)."""
    finite = volume[np.isfinite(volume)]
    if finite.size != volume.size:
        raise ValueError("volume holds NaN or infinite values; DICOM pixel data cannot store them.")
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if np.all(np.equal(np.round(volume), volume)) and lo >= -32768 and hi <= 65535:
        signed = lo < 0
        if signed and hi > 32767:
            raise ValueError(f"volume integer range [{lo}, {hi}] fits neither uint16 nor int16.")
        return volume.astype(np.int16 if signed else np.uint16), 1.0, 0.0, signed
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((volume - lo) / slope)
    return np.clip(stored, 0, 65535).astype(np.uint16), slope, lo, False


def write_mr_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | PathLike,
    series_description: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ANON",
    patient_name: str | None = None,
    study_id: str | None = None,
    series_number: int = 1,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a 3D volume as an MR Image Storage series, one file per slice (``slice_0000.dcm``, ...).

    Geometry is taken from ``affine`` (RAS world, as NIfTI and MONAI's meta ``"affine"`` give): the volume's first
    axis runs along a row of each slice (columns), the second along a column (rows), the third across slices.
    Values are stored as 16-bit integers, exactly for integer-valued volumes, otherwise with RescaleSlope /
    RescaleIntercept (error at most half a slope step).

    Args:
        volume: array ``(X, Y, Z)``, no NaN.
        affine: 4x4 voxel-to-RAS matrix with orthogonal columns (no shear).
        out_dir: folder to write (created; files of the same names are overwritten).
        series_description: SeriesDescription, e.g. the modality name ``"t1ce"``.
        study_uid: StudyInstanceUID to share between a case's series; new if None.
        series_uid: SeriesInstanceUID; new if None.
        patient_id: PatientID (and StudyID unless given).
        patient_name: PatientName (default ``patient_id``).
        study_id: StudyID (at most 16 characters are kept).
        series_number: SeriesNumber.
        uid_seed: if given, every UID not passed is derived from it, so that a conversion is reproducible.

    Returns:
        The written files, in slice order.
    """
    volume = np.asarray(volume)
    affine = np.asarray(affine, dtype=np.float64)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be a 3D array (X, Y, Z), got shape {volume.shape}.")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}.")
    if not series_description:
        raise ValueError("series_description must not be empty.")
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length axis (spacings {spacing}).")
    dirs = lps[:3, :3] / spacing
    if np.max(np.abs(dirs.T @ dirs - np.eye(3))) > 1e-4:
        raise ValueError("affine columns must be orthogonal (sheared geometry cannot be written as a DICOM series).")
    stored, slope, intercept, signed = _quantise(volume.astype(np.float64))

    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = series_uid or _uid(uid_seed, study_uid, series_description, "series")
    frame_uid = _uid(uid_seed, series_uid, "frame")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    row_cos, col_cos = dirs[:, 0], dirs[:, 1]
    files = []
    window_lo, window_hi = float(volume.min()), float(volume.max())
    for k in range(volume.shape[2]):
        sop_uid = _uid(uid_seed, series_uid, k)
        ds = Dataset()
        ds.file_meta = _file_meta(MRImageStorage, sop_uid)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        _patient_study_series(
            ds, patient_id, patient_name, study_uid, study_id or patient_id, series_uid, series_number,
            series_description, "MR", now,
        )
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "BRAIN"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.AcquisitionNumber = 1
        # MR Image module: type 1/2 acquisition attributes (unknown for converted data).
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SequenceName = series_description[:16]
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = ""
        # Image Plane module.
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]  # row spacing (between rows), column spacing
        ds.ImageOrientationPatient = [_ds(v, 8) for v in (*row_cos, *col_cos)]
        position = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceThickness = f"{spacing[2]:.6g}"
        ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
        ds.SliceLocation = _ds(np.dot(position, np.cross(row_cos, col_cos)))
        # Image Pixel module.
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # (rows = Y, columns = X)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if slope != 1.0 or intercept != 0.0:  # not in the MR IOD (a dciodvfy warning) but common and read by all
            ds.RescaleIntercept = f"{intercept:.10g}"
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleType = "US"
        ds.WindowCenter = f"{(window_lo + window_hi) / 2:.6g}"
        ds.WindowWidth = f"{max(window_hi - window_lo, 1e-3):.6g}"
        ds.PixelData = pixels.tobytes()
        path = out / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_photo(
    image: np.ndarray,
    out_path: str | PathLike,
    patient_id: str = "ANON",
    patient_name: str | None = None,
    study_uid: str | None = None,
    laterality: str = "R",
    jpeg: bool = False,
    jpeg_quality: int = 95,
    uid_seed: str | None = None,
) -> Path:
    """Write an RGB (or grey) photograph as an Ophthalmic Photography 8 Bit Image (fundus camera, modality OP).

    Args:
        image: uint8 array ``(H, W, 3)`` (RGB, rows top to bottom) or ``(H, W)`` (grey, MONOCHROME2).
        out_path: ``.dcm`` file to write (parent folders created).
        patient_id: PatientID and StudyID.
        patient_name: PatientName (default ``patient_id``).
        study_uid: StudyInstanceUID; new if None.
        laterality: ImageLaterality, ``"R"``, ``"L"`` or ``"B"``.
        jpeg: store JPEG baseline compressed (lossy, YBR_FULL_422, encoded with Pillow) instead of uncompressed.
        jpeg_quality: Pillow JPEG quality with ``jpeg``.
        uid_seed: if given, UIDs not passed are derived from it (reproducible).

    Returns:
        ``out_path`` as a Path.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}.")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}.")
    if laterality not in ("R", "L", "B"):
        raise ValueError(f"laterality must be 'R', 'L' or 'B', got {laterality!r}.")
    colour = image.ndim == 3
    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = _uid(uid_seed, study_uid, "op-series")
    sop_uid = _uid(uid_seed, series_uid, "op-image")
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = _file_meta(
        OphthalmicPhotography8BitImageStorage, sop_uid, JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    )
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.SOPInstanceUID = sop_uid
    _patient_study_series(
        ds, patient_id, patient_name, study_uid, patient_id, series_uid, 1, "fundus photograph", "OP", now
    )
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]  # the photograph's pixels, unchanged (or JPEG-coded)
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"
    ds.ImageLaterality = laterality
    ds.AnatomicRegionSequence = DicomSequence([_code("81745001", "SCT", "Eye")])
    ds.PatientOrientation = ""
    # Multi-frame module (one frame) and Ophthalmic Photography acquisition/photographic parameters.
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 0
    ds.PatientEyeMovementCommanded = ""
    ds.HorizontalFieldOfView = None
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = ""
    ds.RefractiveStateSequence = DicomSequence()
    # Synchronization module (required by the OP IOD): no external trigger.
    ds.SynchronizationFrameOfReferenceUID = _uid(uid_seed, series_uid, "sync")
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.AcquisitionDeviceTypeCodeSequence = DicomSequence([_code("409898007", "SCT", "Fundus Camera")])
    ds.IlluminationTypeCodeSequence = DicomSequence()
    ds.LightPathFilterTypeStackCodeSequence = DicomSequence()
    ds.ImagePathFilterTypeStackCodeSequence = DicomSequence()
    ds.LensesCodeSequence = DicomSequence()
    ds.DetectorType = "CCD"
    # Image Pixel module.
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    else:
        ds.PresentationLUTShape = "IDENTITY"
    if jpeg:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality)
        data = buffer.getvalue()
        ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{image.nbytes / len(data):.4g}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
    else:
        ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(image).tobytes()
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def nifti_case_to_dicom(
    case_dir: str | PathLike,
    out_dir: str | PathLike,
    modalities: Sequence[str] | None = None,
    case_id: str | None = None,
) -> dict[str, list[Path]]:
    """Convert a BraTS-style NIfTI case folder (``<case>_<modality>.nii.gz``) to one DICOM study.

    Each modality becomes a series in ``out_dir/<modality>/`` with SeriesDescription = modality name; all series
    share one StudyInstanceUID (derived from the case id, so a repeated conversion gives the same UIDs) and one
    PatientID = case id. Segmentations (``_seg``) and other non-modality files are not converted.

    Args:
        case_dir: the case folder.
        out_dir: the study folder to write.
        modalities: modalities to convert (default: every ``<case>_<kind>.nii[.gz]`` except ``seg``/``mask``).
        case_id: the case id (default: the folder name).

    Returns:
        ``{modality: files}``.
    """
    import nibabel as nib

    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise ValueError(f"case_dir {case_dir} is not a folder.")
    case_id = case_id or case_dir.name
    pattern = re.compile(rf"^{re.escape(case_id)}_(?P<kind>[A-Za-z0-9]+)\.nii(\.gz)?$")
    found = {m["kind"]: p for p in sorted(case_dir.iterdir()) if (m := pattern.match(p.name))}
    if modalities is None:
        modalities = [k for k in found if k not in ("seg", "mask", "brainmask")]
    missing = [m for m in modalities if m not in found]
    if missing or not modalities:
        raise ValueError(f"case {case_dir}: no NIfTI file for modalities {missing or 'any'} (found {sorted(found)}).")
    study_uid = _uid(case_id, "study")
    written = {}
    for number, modality in enumerate(modalities, start=1):
        image = nib.load(found[modality])
        volume = np.asanyarray(image.dataobj)
        if volume.ndim == 4 and volume.shape[3] == 1:
            volume = volume[..., 0]
        written[modality] = write_mr_series(
            volume, image.affine, Path(out_dir) / modality, modality, study_uid=study_uid, patient_id=case_id,
            series_number=number, uid_seed=f"{case_id}/{modality}",
        )
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``nifti-case <case folder> <out>`` or ``photo <image> <out.dcm>``."""
    parser = argparse.ArgumentParser(prog="python -m common.dicom.write_images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    case = sub.add_parser("nifti-case", help="BraTS-style NIfTI case folder -> DICOM study (one MR series each)")
    case.add_argument("case_dir")
    case.add_argument("out_dir")
    case.add_argument("--modalities", nargs="+", default=None, help="modalities to convert (default: all found)")
    case.add_argument("--case_id", default=None, help="case id (default: the folder name)")
    photo = sub.add_parser("photo", help="PNG/JPEG photograph -> Ophthalmic Photography 8 Bit Image")
    photo.add_argument("image")
    photo.add_argument("out_path")
    photo.add_argument("--patient_id", default=None, help="PatientID (default: the image file stem)")
    photo.add_argument("--laterality", default="R", choices=["R", "L", "B"])
    photo.add_argument("--jpeg", action="store_true", help="store JPEG baseline compressed")
    args = parser.parse_args(argv)
    if args.command == "nifti-case":
        written = nifti_case_to_dicom(args.case_dir, args.out_dir, args.modalities, args.case_id)
        for modality, files in written.items():
            print(f"{modality}: {len(files)} files in {files[0].parent}")
    else:
        from PIL import Image

        with Image.open(args.image) as img:
            rgb = np.asarray(img.convert("RGB"))
        path = write_photo(
            rgb, args.out_path, patient_id=args.patient_id or Path(args.image).stem, laterality=args.laterality,
            jpeg=args.jpeg, uid_seed=str(Path(args.image).resolve()),
        )
        print(path)


if __name__ == "__main__":
    main()
