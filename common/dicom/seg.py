"""DICOM Segmentation (SEG) of a bundle's masks, referencing the source series (highdicom)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .codes import PRIVATE_SCHEME, SegmentCode, private_scheme_identification, segment_code
from .frames import has_geometry, is_multiframe_volume, sort_source_datasets

hd, _ = optional_import("highdicom", descriptor="{} failed: DICOM SEG/SR output needs `pip install highdicom`")

__all__ = ["MANUFACTURER", "algorithm_identification", "segment_descriptions", "write_segmentation"]

MANUFACTURER = "MTL MONAI bundles"

#: Single-frame stand-ins for photograph IODs that highdicom 0.28.2 treats as enhanced multi-frame (it then wants a
#: SharedFunctionalGroupsSequence, which these IODs do not have): Ophthalmic Photography 8/16 Bit -> VL Photographic.
_PHOTO_STAND_INS = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "1.2.840.10008.5.1.4.1.1.77.1.4",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "1.2.840.10008.5.1.4.1.1.77.1.4",
}


def _single_frame_view(source: Dataset) -> Dataset:
    """``source`` as highdicom can take it as a SEG source (a shallow copy; the original is not changed)."""
    stand_in = _PHOTO_STAND_INS.get(str(source.get("SOPClassUID", "")))
    if stand_in is None or "SharedFunctionalGroupsSequence" in source or int(source.get("NumberOfFrames", 1)) != 1:
        return source
    view = Dataset()
    view.update(source)
    view.file_meta = getattr(source, "file_meta", Dataset())
    del view.SOPClassUID  # the elements are shared with ``source``: replace them, do not set their values
    view.SOPClassUID = stand_in
    del view.NumberOfFrames
    return view


def _restore_referenced_classes(seg: Dataset, originals: Sequence[Dataset]) -> None:
    """Put the sources' own SOP Class UIDs back into the SEG's references (undoes :func:`_single_frame_view`)."""
    by_instance = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in originals}

    def fix(item: Dataset) -> None:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in by_instance and "ReferencedSOPClassUID" in item:
            item.ReferencedSOPClassUID = by_instance[uid]
        for elem in item:
            if elem.VR == "SQ":
                for child in elem.value:
                    fix(child)

    fix(seg)


def algorithm_identification(name: str, version: str) -> hd.AlgorithmIdentificationSequence:
    """Algorithm identification of a bundle: family "Artificial Intelligence" (DCM 123110), its name and version."""
    if not name or not version:
        raise ValueError(f"algorithm_name and algorithm_version must be non-empty, got {name!r}, {version!r}.")
    return hd.AlgorithmIdentificationSequence(
        name=str(name)[:64], version=str(version)[:64], family=codes.DCM.ArtificialIntelligence
    )


def segment_descriptions(
    segments: Sequence[str],
    algorithm_name: str,
    algorithm_version: str,
    table: Mapping[str, SegmentCode] | None = None,
) -> list[hd.seg.SegmentDescription]:
    """One AUTOMATIC segment description per name in ``segments`` (numbered from 1), coded from ``table``."""
    algorithm = algorithm_identification(algorithm_name, algorithm_version)
    out = []
    for number, name in enumerate(segments, start=1):
        code = segment_code(name, table)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(name)[:64],
                segmented_property_category=code.category,
                segmented_property_type=code.type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=str(name)[:64],
                anatomic_regions=[code.region] if code.region is not None else None,
            )
        )
    return out


def write_segmentation(
    source_datasets: Sequence[Dataset],
    label_array: np.ndarray,
    segments: Sequence[str],
    algorithm_name: str,
    algorithm_version: str,
    out_path: str,
    series_description: str | None = None,
    series_number: int = 901,
    fractional: bool = False,
    segment_table: Mapping[str, SegmentCode] | None = None,
    manufacturer: str = MANUFACTURER,
) -> hd.seg.Segmentation:
    """Write a DICOM SEG of ``label_array`` to ``out_path``, one segment per name in ``segments``.

    Args:
        source_datasets: the source images (a series' slices in any order, or one 2-D photograph).
        label_array: aligned to the source frames (see :func:`common.dicom.frames.mask_to_source_frames`):
            a label map ``(n_frames, Rows, Columns)`` whose value ``k`` is the ``k``-th segment (0 background),
            or stacked masks ``(n_frames, Rows, Columns, n_segments)``: binary (overlapping allowed) or, with
            ``fractional``, probabilities in [0, 1].
        segments: segment names (keys of ``segment_table``, see :func:`common.dicom.codes.segment_codes`).
        algorithm_name, algorithm_version: the bundle's name and version (metadata.json).
        out_path: output file.
        series_description: SeriesDescription (default ``"<algorithm_name> segmentation"``).
        series_number: SeriesNumber of the SEG series.
        fractional: write a FRACTIONAL (probability) SEG instead of a BINARY one.
        segment_table: segment name -> codes.
        manufacturer: Manufacturer of the SEG.

    Returns:
        The written segmentation dataset.

    Raises:
        ValueError: bad ``segments`` or ``label_array`` shape/values.
    """
    if len(segments) == 0:
        raise ValueError("segments must name at least one segment.")
    sources = sort_source_datasets(source_datasets)
    n, rows, cols = len(sources), int(sources[0].Rows), int(sources[0].Columns)
    if len(sources) == 1 and is_multiframe_volume(sources[0]):  # one enhanced MR/CT file: a frame per source frame
        n = int(sources[0].NumberOfFrames)
    array = np.asarray(label_array)
    series = sources[0].get("SeriesInstanceUID", "?")
    if array.ndim == 3:
        if array.shape != (n, rows, cols):
            raise ValueError(f"label_array shape {array.shape} does not match series {series}: ({n}, {rows}, {cols}).")
        if fractional:
            raise ValueError("fractional needs stacked probability masks (n_frames, Rows, Columns, n_segments).")
        if array.min() < 0 or array.max() > len(segments):
            raise ValueError(f"label_array values must be in [0, {len(segments)}], got [{array.min()}, {array.max()}].")
        pixels = array.astype(np.uint8 if len(segments) < 256 else np.uint16)
    elif array.ndim == 4:
        if array.shape != (n, rows, cols, len(segments)):
            raise ValueError(
                f"label_array shape {array.shape} does not match series {series} and {len(segments)} segment(s): "
                f"({n}, {rows}, {cols}, {len(segments)})."
            )
        if fractional:
            if array.min() < 0 or array.max() > 1:
                raise ValueError("fractional label_array must hold probabilities in [0, 1].")
            pixels = array.astype(np.float32)
        else:
            pixels = array.astype(bool)
    else:
        raise ValueError(f"label_array must be 3-D or 4-D, got shape {array.shape}.")
    views = [_single_frame_view(ds) for ds in sources]
    seg = hd.seg.Segmentation(
        source_images=views,
        pixel_array=pixels,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=segment_descriptions(segments, algorithm_name, algorithm_version, segment_table),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=str(algorithm_name)[:64],
        software_versions=str(algorithm_version)[:64],
        device_serial_number="1",
        content_description=f"{algorithm_name} {algorithm_version}"[:64],
        content_label="SEGMENTATION",
        omit_empty_frames=True,
        series_description=(series_description or f"{algorithm_name} segmentation")[:64],
    )
    if any(v is not ds for v, ds in zip(views, sources)):
        _restore_referenced_classes(seg, sources)
    uses_private = any(
        code.CodingSchemeDesignator == PRIVATE_SCHEME
        for item in seg.SegmentSequence
        for code in (item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0])
    )
    if uses_private:  # declare the private coding scheme (SOP Common module)
        seg.CodingSchemeIdentificationSequence = [private_scheme_identification()]
    if not has_geometry(sources[0]) and not is_multiframe_volume(sources[0]) and "PatientOrientation" not in seg:
        # General Image module, Type 2C: needed where the image has no plane geometry (photographs)
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    seg.save_as(out_path)
    return seg
