"""TID 1500 Measurement Report (Comprehensive 3D SR) of a bundle's findings and segment measurements (highdicom)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .codes import MeasurementCode, measurement_code, private_scheme_identification
from .frames import has_geometry, is_multiframe_volume, sort_source_datasets
from .seg import MANUFACTURER

hd, _ = optional_import("highdicom", descriptor="{} failed: DICOM SEG/SR output needs `pip install highdicom`")

__all__ = ["procedure_code", "write_measurement_report"]


# DICOM modality codes (CID 29), by Modality value
_MODALITY_CODES = {
    "OP": codes.DCM.OphthalmicPhotography,
    "XC": codes.DCM.ExternalCameraPhotography,
    "CT": codes.DCM.ComputedTomography,
    "MR": codes.DCM.MagneticResonance,
}


def procedure_code(source: Dataset) -> hd.sr.CodedConcept:
    """The imaging procedure reported for a source image, from its Modality and BodyPartExamined.

    MR of the brain/head: LOINC 24590-2 "MRI Head"; MR of the heart: SCT 241620005 "Cardiac MRI"; other MR:
    LOINC 25056-3; OP, XC, CT: their DCM modality code (e.g. "OP" Ophthalmic Photography); else DCM "OT" Other.
    """
    modality = str(source.get("Modality", "OT"))
    body = str(source.get("BodyPartExamined", "")).upper()
    if modality == "MR":
        code = (
            codes.LN.MRIHeadReport
            if body in ("BRAIN", "HEAD")
            else codes.SCT.CardiacMRI
            if body in ("HEART", "CHEST")
            else codes.LN.MRIUnspecifiedBodyRegion
        )
    else:
        code = _MODALITY_CODES.get(modality, codes.DCM.Other)
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


def _measurements(
    values: Mapping[str, float], table: Mapping[str, MeasurementCode] | None, decimals: int, algorithm
) -> list[hd.sr.Measurement]:
    out = []
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)):
            continue
        code = measurement_code(name, table)
        out.append(
            hd.sr.Measurement(
                name=code.name, value=round(float(value), decimals), unit=code.unit, algorithm_id=algorithm
            )
        )
    return out


def _segment_numbers(segmentation: Dataset) -> dict[str, int]:
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in segmentation.SegmentSequence}


def write_measurement_report(
    source_datasets: Sequence[Dataset],
    out_path: str,
    algorithm_name: str,
    algorithm_version: str,
    measurements: Mapping[str, float] | None = None,
    image_measurements: Sequence[tuple[Dataset, Mapping[str, float]]] | None = None,
    segmentation: Dataset | None = None,
    segment_measurements: Mapping[str, Mapping[str, float]] | None = None,
    procedure: hd.sr.CodedConcept | None = None,
    series_description: str | None = None,
    series_number: int = 902,
    measurement_table: Mapping[str, MeasurementCode] | None = None,
    decimals: int = 6,
    manufacturer: str = MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """Write a TID 1500 Measurement Report (Comprehensive 3D SR) observed by the algorithm (a device observer).

    Args:
        source_datasets: the source images (referenced in the report and in its evidence).
        out_path: output file.
        algorithm_name, algorithm_version: the bundle's name and version.
        measurements: study-level findings, name -> value (one measurement group), e.g. ``idh_probability``,
            ``age``; names and units from ``measurement_table`` (see :func:`common.dicom.codes.measurement_code`).
            Non-finite values are left out.
        image_measurements: per-image findings: (source image, name -> value), one group per image referencing it.
        segmentation: the SEG the segment measurements refer to (added to the evidence).
        segment_measurements: segment label -> (name -> value), e.g. ``{"tumour": {"volume": 1234.5}}``: one TID 1411
            ROI group per segment referencing it in ``segmentation`` with the source series (or, for a photograph,
            the source image).
        procedure: procedure reported (default from the source's modality, see :func:`procedure_code`).
        series_description: SeriesDescription (default ``"<algorithm_name> measurements"``).
        series_number: SeriesNumber of the SR series.
        measurement_table: measurement name -> concept and unit.
        decimals: values are rounded to this many decimals.
        manufacturer: Manufacturer of the SR.

    Returns:
        The written SR dataset.

    Raises:
        ValueError: nothing to report, segment measurements without a segmentation, or an unknown segment label.
    """
    sources = sort_source_datasets(source_datasets)
    if not (measurements or image_measurements or segment_measurements):
        raise ValueError("write_measurement_report needs measurements, image_measurements or segment_measurements.")
    if segment_measurements and segmentation is None:
        raise ValueError("segment_measurements need the segmentation they refer to.")
    algorithm = hd.sr.AlgorithmIdentification(name=str(algorithm_name)[:64], version=str(algorithm_version)[:64])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=str(algorithm_name)[:64],
            manufacturer_name=manufacturer,
            model_name=f"{algorithm_name} {algorithm_version}"[:64],
        ),
    )
    groups: list = []
    if measurements:
        items = _measurements(measurements, measurement_table, decimals, algorithm)
        if items:
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="study findings"),
                    algorithm_id=algorithm,
                    measurements=items,
                )
            )
    for source, values in image_measurements or []:
        items = _measurements(values, measurement_table, decimals, algorithm)
        if items:
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"image {source.get('InstanceNumber', '')} findings".strip()
                    ),
                    algorithm_id=algorithm,
                    measurements=items,
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
                )
            )
    if segment_measurements:
        numbers = _segment_numbers(segmentation)
        volumetric = has_geometry(sources[0]) or is_multiframe_volume(sources[0])
        for label, values in segment_measurements.items():
            if label not in numbers:
                raise ValueError(
                    f"segment '{label}' is not in segmentation {segmentation.SOPInstanceUID} "
                    f"(segments: {list(numbers)})."
                )
            tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"segment {label}"[:64])
            items = _measurements(values, measurement_table, decimals, algorithm)
            # built explicitly: ReferencedSegment.from_segmentation fails on single-segment SEGs (highdicom 0.28.2).
            # A photograph's segment is referenced as a whole with its source image (TID 1411 form): the planar
            # (TID 1410) frame reference that highdicom writes holds ReferencedSegmentNumber beside
            # ReferencedFrameNumber, which dciodvfy rejects.
            if volumetric:
                ref_sources = {"source_series": hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)}
            else:
                ref_sources = {"source_images": [hd.sr.SourceImageForSegmentation.from_source_image(sources[0])]}
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=numbers[label],
                **ref_sources,
            )
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, referenced_segment=segment, algorithm_id=algorithm, measurements=items
                )
            )
    if not groups:
        raise ValueError("write_measurement_report: every value given is missing or not finite.")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure or procedure_code(sources[0]),
        imaging_measurements=groups,
        # highdicom 0.28.2 describes image library entries from top-level plane attributes, which a multi-frame
        # (enhanced) image keeps in functional groups: such a source is referenced in the evidence and by series only
        referenced_images=[ds for ds in sources if not is_multiframe_volume(ds)] or None,
    )
    evidence = list(sources) + ([segmentation] if segmentation is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=(series_description or f"{algorithm_name} measurements")[:64],
    )
    sr.CodingSchemeIdentificationSequence = [private_scheme_identification()]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    sr.save_as(out_path)
    return sr
