"""DICOM SEG, SR and Secondary Capture output: objects validated by dciodvfy (0 errors) and read back with
pydicom/highdicom."""

from __future__ import annotations

import glob
import json
import os
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from dicom_sources import MR_SHAPE, write_enhanced_mr, write_fundus_photo, write_mr_series  # noqa: E402
from dicom_validate import DCIODVFY, assert_secondary_capture, dciodvfy_errors, dciodvfy_report  # noqa: E402

from common.dicom.codes import (  # noqa: E402
    PRIVATE_SCHEME,
    measurement_code,
    measurement_codes,
    segment_code,
    segment_codes,
)
from common.dicom.frames import mask_to_source_frames, sort_source_datasets  # noqa: E402
from common.dicom.sc import key_frames, write_secondary_captures  # noqa: E402
from common.dicom.seg import write_segmentation  # noqa: E402
from common.dicom.sr import write_measurement_report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bundle_codes(bundle: str) -> dict:
    """A bundle's ``dicom_codes`` (its inference.json): the codes of its segments and measurements."""
    with open(os.path.join(REPO, "bundles", bundle, "configs", "inference.json")) as f:
        return json.load(f)["dicom_codes"]


_ALL = [bundle_codes(b) for b in ("glioma_seg_idh", "fundus_glaucoma", "cmr_fundus", "brats_mtl")]
SEG_TABLE = segment_codes({k: v for c in _ALL for k, v in c.get("segments", {}).items()})
SEG_TABLE.update({"disc": SEG_TABLE["optic_disc"], "cup": SEG_TABLE["optic_cup"]})
M_TABLE = measurement_codes({k: v for c in _ALL for k, v in c.get("measurements", {}).items()})

needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (dicom3tools) is not on PATH: scripts/install_system.sh installs it"
)


def assert_valid(path: str) -> None:
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH: scripts/install_system.sh installs it; DICOM not validated")
    errors = dciodvfy_errors(path)
    assert errors == [], f"dciodvfy errors in {path}:\n" + dciodvfy_report(path)


def read_series(folder: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(glob.glob(os.path.join(folder, "*.dcm")))]


@pytest.fixture(scope="module")
def mr(tmp_path_factory) -> list[pydicom.Dataset]:
    folder = str(tmp_path_factory.mktemp("mr"))
    write_mr_series(folder)
    return read_series(folder)


@pytest.fixture(scope="module")
def oblique_mr(tmp_path_factory) -> list[pydicom.Dataset]:
    folder = str(tmp_path_factory.mktemp("mr_oblique"))
    c, s = np.cos(0.3), np.sin(0.3)
    write_mr_series(folder, orientation=(c, s, 0.0, 0.0, 0.0, -1.0), origin=(5.0, -3.0, 40.0), seed=1)
    return read_series(folder)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> pydicom.Dataset:
    return pydicom.dcmread(write_fundus_photo(str(tmp_path_factory.mktemp("photo") / "fundus.dcm")))


def sr_items(ds: pydicom.Dataset):
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from sr_items(item)


def num_values(ds: pydicom.Dataset) -> dict[str, tuple[float, str]]:
    """NUM items of an SR's Imaging Measurements (not its image library): concept code value -> (value, UCUM unit);
    several of one code keep the last."""
    out = {}
    measurements = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    assert len(measurements) == 1, "no single Imaging Measurements container"
    for item in sr_items(measurements[0]):
        if item.ValueType == "NUM":
            measured = item.MeasuredValueSequence[0]
            out[item.ConceptNameCodeSequence[0].CodeValue] = (
                float(measured.NumericValue),
                measured.MeasurementUnitsCodeSequence[0].CodeValue,
            )
    return out


def tumour_labels() -> np.ndarray:
    lab = np.zeros(MR_SHAPE, np.uint8)
    lab[2:6, 8:20, 10:24] = 1
    lab[3:5, 12:16, 14:18] = 2
    return lab


# --- test sources -------------------------------------------------------------------------------------------------


@needs_dciodvfy
def test_fixture_sources_are_valid(mr, photo, tmp_path):
    assert_valid(mr[0].filename)
    assert_valid(photo.filename)
    assert len(mr) == MR_SHAPE[0] and photo.SamplesPerPixel == 3


# --- SEG ----------------------------------------------------------------------------------------------------------


def test_seg_series(mr, tmp_path):
    out = str(tmp_path / "seg.dcm")
    lab = tumour_labels()
    write_segmentation(mr, lab, ["tumour", "et"], "glioma_seg_idh", "0.1.0", out, segment_table=SEG_TABLE)
    assert_valid(out)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == mr[0].SeriesInstanceUID
    assert ds.StudyInstanceUID == mr[0].StudyInstanceUID and ds.FrameOfReferenceUID == mr[0].FrameOfReferenceUID
    segments = ds.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["tumour", "et"]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SCT Neoplasm
    assert segments[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "C113842"  # NCIt Enhancing Lesion
    assert segments[0].AnatomicRegionSequence[0].CodeValue == "12738006"  # SCT Brain
    algo = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("glioma_seg_idh", "0.1.0")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
    assert segments[0].SegmentAlgorithmType == "AUTOMATIC"
    assert ds.SeriesDescription == "glioma_seg_idh segmentation"
    # pixels: back to the label map in source order, through highdicom's reader
    sources = sort_source_datasets(mr)
    seg = hd.seg.Segmentation.from_dataset(ds)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True
    )
    np.testing.assert_array_equal(pixels, lab)


def test_seg_empty_segment_and_single_segment(mr, tmp_path):
    out = str(tmp_path / "seg_empty.dcm")
    write_segmentation(
        mr, np.zeros(MR_SHAPE, np.uint8), ["flair_abnormality"], "glioma_seg_idh", "0.1.0", out, segment_table=SEG_TABLE
    )
    assert_valid(out)
    ds = pydicom.dcmread(out)
    assert len(ds.SegmentSequence) == 1
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SCT Lesion


def test_seg_fractional(mr, tmp_path):
    out = str(tmp_path / "seg_frac.dcm")
    prob = np.zeros((*MR_SHAPE, 1), np.float32)
    prob[2:5, 10:20, 10:20, 0] = 0.75
    write_segmentation(mr, prob, ["tumour"], "glioma_seg_idh", "0.1.0", out, fractional=True, segment_table=SEG_TABLE)
    assert_valid(out)
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    frames = ds.pixel_array.reshape(-1, MR_SHAPE[1], MR_SHAPE[2])
    assert frames.max() == round(0.75 * int(ds.MaximumFractionalValue))


def test_seg_photo(photo, tmp_path):
    out = str(tmp_path / "seg_photo.dcm")
    masks = np.zeros((1, photo.Rows, photo.Columns, 2), bool)
    masks[0, 16:32, 20:44, 0] = True
    masks[0, 20:28, 26:36, 1] = True
    write_segmentation([photo], masks, ["disc", "cup"], "fundus_glaucoma", "0.2.0", out, segment_table=SEG_TABLE)
    assert_valid(out)
    ds = pydicom.dcmread(out)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == photo.SeriesInstanceUID
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in ds.SegmentSequence]
    assert types[0].CodeValue == "81016008" and types[0].CodingSchemeDesignator == "SCT"  # optic disc
    assert types[1].CodingSchemeDesignator == PRIVATE_SCHEME  # optic cup: no verifiable standard code
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    frames = ds.pixel_array.reshape(-1, photo.Rows, photo.Columns)
    np.testing.assert_array_equal(frames[0].astype(bool), masks[0, ..., 0])
    np.testing.assert_array_equal(frames[1].astype(bool), masks[0, ..., 1])


def test_seg_bad_input(mr):
    with pytest.raises(ValueError, match="label_array shape"):
        write_segmentation(
            mr, np.zeros((3, 32, 32), np.uint8), ["tumour"], "b", "1", "/nonexistent/x.dcm", segment_table=SEG_TABLE
        )
    with pytest.raises(ValueError, match="values must be in"):
        write_segmentation(
            mr, np.full(MR_SHAPE, 3, np.uint8), ["tumour"], "b", "1", "/nonexistent/x.dcm", segment_table=SEG_TABLE
        )
    with pytest.raises(ValueError, match="has no codes"):
        segment_code("spleen tumour")


# --- SR -----------------------------------------------------------------------------------------------------------


def test_sr_with_segment_volumes(mr, tmp_path):
    seg_path, sr_path = str(tmp_path / "seg.dcm"), str(tmp_path / "sr.dcm")
    seg = write_segmentation(
        mr, tumour_labels(), ["tumour", "et"], "glioma_seg_idh", "0.1.0", seg_path, segment_table=SEG_TABLE
    )
    write_measurement_report(
        mr,
        sr_path,
        "glioma_seg_idh",
        "0.1.0",
        measurements={"idh_probability": 0.7345678912},
        segmentation=seg,
        segment_measurements={"tumour": {"volume": 1234.5678}, "et": {"volume": 39.6}},
        measurement_table=M_TABLE,
    )
    assert_valid(sr_path)
    ds = pydicom.dcmread(sr_path)
    assert ds.SOPClassUID == hd.sr.Comprehensive3DSR.from_dataset(ds).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    procedure = [i for i in sr_items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "121058"][0]
    assert procedure.ConceptCodeSequence[0].CodeValue == "24590-2"  # LOINC MRI Head (BodyPartExamined BRAIN)
    values = num_values(ds)
    assert values["IDH_MUT_PROB"] == (pytest.approx(0.734568, abs=1e-9), "1")
    volumes = [
        (float(i.MeasuredValueSequence[0].NumericValue), i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0])
        for i in sr_items(ds)
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "118565006"
    ]
    assert [v for v, _ in volumes] == [pytest.approx(1234.5678), pytest.approx(39.6)]
    assert all(unit.CodeValue == "mm3" and unit.CodingSchemeDesignator == "UCUM" for _, unit in volumes)
    # the SEG is referenced by its SOP Instance UID, with each segment's number
    refs = [
        (r.ReferencedSOPInstanceUID, int(r.ReferencedSegmentNumber))
        for i in sr_items(ds)
        if i.ValueType == "IMAGE"
        for r in i.ReferencedSOPSequence
        if "ReferencedSegmentNumber" in r
    ]
    assert refs == [(seg.SOPInstanceUID, 1), (seg.SOPInstanceUID, 2)]
    evidence = {
        s.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    assert evidence == {d.SOPInstanceUID for d in mr} | {seg.SOPInstanceUID}
    # observer: the algorithm as a device; the private coding scheme is declared
    texts = {i.ConceptNameCodeSequence[0].CodeValue: i.get("TextValue") for i in sr_items(ds) if i.ValueType == "TEXT"}
    assert texts["121013"] == "glioma_seg_idh"  # Device Observer Name
    assert texts["111001"] == "glioma_seg_idh" and texts["111003"] == "0.1.0"  # Algorithm Name / Version
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    assert ds.StudyInstanceUID == mr[0].StudyInstanceUID and ds.PatientID == mr[0].PatientID
    # highdicom's reader finds the volumetric groups and their segment references
    groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    assert groups[0].referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID


def test_sr_single_segment_seg(mr, tmp_path):
    seg = write_segmentation(
        mr,
        np.zeros(MR_SHAPE, np.uint8),
        ["tumour"],
        "glioma_seg_idh",
        "0.1.0",
        str(tmp_path / "s.dcm"),
        segment_table=SEG_TABLE,
    )
    out = str(tmp_path / "sr.dcm")
    write_measurement_report(
        mr,
        out,
        "glioma_seg_idh",
        "0.1.0",
        segmentation=seg,
        segment_measurements={"tumour": {"volume": 0.0}},
        measurement_table=M_TABLE,
    )
    assert_valid(out)
    assert num_values(pydicom.dcmread(out))["118565006"] == (0.0, "mm3")


def test_sr_regression_values_and_units(photo, tmp_path):
    values = {
        "age": 61.25,
        "sex_probability": 0.125,
        "height": 171.5,
        "weight": 72.25,
        "bmi": 24.56,
        "sbp": 131.0,
        "dbp": 82.5,
        "glucose": 99.5,
        "hba1c": 5.6,
        "waist": 88.0,
    }
    out = str(tmp_path / "sr_factors.dcm")
    write_measurement_report([photo], out, "cmr_fundus", "0.1.0", measurements=values, measurement_table=M_TABLE)
    assert_valid(out)
    got = num_values(pydicom.dcmread(out))
    expected_codes = {"age": ("30525-0", "a"), "sbp": ("8480-6", "mm[Hg]"), "dbp": ("8462-4", "mm[Hg]")}
    expected_codes |= {"bmi": ("39156-5", "kg/m2"), "height": ("8302-2", "cm"), "weight": ("29463-7", "kg")}
    expected_codes |= {
        "glucose": ("2345-7", "mg/dL"),
        "hba1c": ("4548-4", "%"),
        "sex_probability": ("MALE_SEX_PROB", "1"),
    }
    for name, (code, unit) in expected_codes.items():
        assert got[code] == (pytest.approx(values[name]), unit), name
    assert len(got) == len(values)


def test_sr_photo_with_seg_reference(photo, tmp_path):
    masks = np.zeros((1, photo.Rows, photo.Columns, 2), bool)
    masks[0, 16:32, 20:44, 0] = True  # the cup segment is empty: its SEG has no frame for it
    seg = write_segmentation(
        [photo], masks, ["disc", "cup"], "fundus_glaucoma", "0.2.0", str(tmp_path / "seg.dcm"), segment_table=SEG_TABLE
    )
    out = str(tmp_path / "sr.dcm")
    write_measurement_report(
        [photo],
        out,
        "fundus_glaucoma",
        "0.2.0",
        measurements={"glaucoma_probability": 0.4321},
        segmentation=seg,
        segment_measurements={"disc": {"vcdr": 0.55}},
        measurement_table=M_TABLE,
    )
    assert_valid(out)
    ds = pydicom.dcmread(out)
    assert num_values(ds) == {"GLAUCOMA_PROB": (pytest.approx(0.4321), "1"), "VCDR": (pytest.approx(0.55), "{ratio}")}
    refs = {r.ReferencedSOPInstanceUID for i in sr_items(ds) if i.ValueType == "IMAGE" for r in i.ReferencedSOPSequence}
    assert {seg.SOPInstanceUID, photo.SOPInstanceUID} <= refs
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    procedure = [i for i in sr_items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "121058"][0]
    assert procedure.ConceptCodeSequence[0].CodeValue == "XC"  # External-camera Photography (VL photographic source)


def test_sr_per_image_findings(mr, tmp_path):
    sources = sort_source_datasets(mr)
    out = str(tmp_path / "sr_slices.dcm")
    write_measurement_report(
        mr,
        out,
        "brats_mtl",
        "0.1.0",
        image_measurements=[(s, {"tumour_probability": k / 10}) for k, s in enumerate(sources)],
        measurement_table=M_TABLE,
    )
    assert_valid(out)
    ds = pydicom.dcmread(out)
    groups = [i for i in sr_items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "125007"]  # Measurement Group
    assert len(groups) == len(sources)
    for k, (group, source) in enumerate(zip(groups, sources)):
        num = [i for i in group.ContentSequence if i.ValueType == "NUM"][0]
        image = [i for i in group.ContentSequence if i.ValueType == "IMAGE"][0]
        assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(k / 10)
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sr_bad_input(mr):
    with pytest.raises(ValueError, match="needs measurements"):
        write_measurement_report(mr, "/nonexistent/x.dcm", "b", "1", measurement_table=M_TABLE)
    with pytest.raises(ValueError, match="need the segmentation"):
        write_measurement_report(
            mr,
            "/nonexistent/x.dcm",
            "b",
            "1",
            segment_measurements={"tumour": {"volume": 1}},
            measurement_table=M_TABLE,
        )
    with pytest.raises(ValueError, match="has no code"):
        measurement_code("shoe size")


# --- Secondary Capture --------------------------------------------------------------------------------------------


def test_key_frames():
    masks = np.zeros((20, 4, 4), bool)
    assert key_frames(None, 20) == [10] and key_frames(masks, 20) == [10]  # nothing segmented: the middle
    masks[[3, 4, 6], 1, 1] = True
    assert key_frames(masks, 20) == [3, 4, 6]  # few segmented frames: all of them
    masks[2:15, :2, :2] = True
    masks[11] = True  # the largest area
    shown = key_frames(masks[..., None], 20, max_frames=4)
    assert len(shown) == 4 and shown[0] == 2 and shown[-1] == 14 and 11 in shown
    with pytest.raises(ValueError, match="max_frames"):
        key_frames(masks, 20, max_frames=0)
    with pytest.raises(ValueError, match="frames"):
        key_frames(masks, 19)


def test_secondary_capture_series_two_segments(mr, tmp_path):
    """Nested segments on a grey series: one SC per segmented slice (at most ``max_frames``), a colour per segment."""
    sources = sort_source_datasets(mr)
    labels = tumour_labels()
    masks = np.stack([labels >= 1, labels >= 2], axis=-1)  # (frames, rows, columns, 2)
    no_pixels = [pydicom.dcmread(ds.filename, stop_before_pixels=True) for ds in mr]  # as DicomResultWriter reads
    paths = write_secondary_captures(
        no_pixels, str(tmp_path), "glioma_seg_idh", "0.4.1", masks=masks, segments=["tumour", "core"],
        lines=["idh_probability: 0.81"], warnings=["check me"], frame_lines={3: ["this image: 0.5"]}, max_frames=3,
    )
    frames = [int(os.path.basename(p)[3:6]) for p in paths]
    assert frames == key_frames(masks, len(sources), 3) and frames[0] == 2 and frames[-1] == 5  # both ends shown
    for frame, path in zip(frames, paths):
        assert_secondary_capture(path, sources[frame], masks[frame], None)
    sc = pydicom.dcmread(paths[0])
    assert list(sc.PatientOrientation) == ["L", "P"]  # axial slice: rows run to the left, columns to posterior
    # the grey source is windowed: the picture spans (nearly) the full grey range
    picture = sc.pixel_array[: int(sources[0].Rows) * (int(sc.Columns) // int(sources[0].Columns))]
    assert picture[..., 0].min() == 0 and picture[..., 0].max() == 255
    with pytest.raises(ValueError, match="does not fit"):
        write_secondary_captures(mr, str(tmp_path), "b", "1", masks=masks, segments=["tumour"])


def test_capture_text():
    from common.handlers import CaseResult, Measurement
    from common.handlers.dicom_results import capture_text

    result = CaseResult(
        case="c",
        segments=["tumour"],
        masks=np.zeros((1, 2, 2, 2), bool),
        affine=np.eye(4),
        measurements={"idh_probability": Measurement(0.81234, "1", "probability of 'mutant'"),
                      "age": Measurement(float("nan"), "a")},
        segment_measurements={"tumour": {"volume": Measurement(15230.4, "mm3"),
                                         "vcdr": Measurement(0.5, "{ratio}", "vertical cup-to-disc ratio")}},
        image_measurements=[(1, {"p": Measurement(0.25)})],
    )
    lines, per_image = capture_text(result, n_images=2)
    assert lines == ["idh_probability (probability of 'mutant'): 0.8123", "age: not available",
                     "tumour volume: 15230 mm3", "tumour vcdr (vertical cup-to-disc ratio): 0.5"]
    assert per_image == {1: ["this image: p: 0.25"]}
    assert capture_text(result, n_images=1)[1] == {}  # per-image values that do not fit the source images


# --- frames -------------------------------------------------------------------------------------------------------


def source_grid_affine(sources: list[pydicom.Dataset]) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS affine of the source grid."""
    first, second = sources[0], sources[1]
    iop = np.asarray(first.ImageOrientationPatient, float)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * float(first.PixelSpacing[1])
    lps[:3, 1] = iop[3:] * float(first.PixelSpacing[0])
    lps[:3, 2] = np.asarray(second.ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float)
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("series", ["mr", "oblique_mr"])
@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(), (0,), (1, 2)])
def test_mask_to_source_frames_exact(series, perm, flips, request):
    sources = sort_source_datasets(request.getfixturevalue(series))
    expected = tumour_labels()  # (slice, row, column) in source order
    volume = expected.transpose(2, 1, 0)  # (column, row, slice)
    affine = source_grid_affine(sources)
    mask, aff = volume.transpose(perm), affine.copy()
    aff[:, :3] = affine[:, list(perm)]
    for axis in flips:
        mask = np.flip(mask, axis)
        aff[:, 3] += aff[:, axis] * (mask.shape[axis] - 1)
        aff[:, axis] = -aff[:, axis]
    frames = mask_to_source_frames(np.ascontiguousarray(mask), aff, list(reversed(sources)))
    np.testing.assert_array_equal(frames, expected)


def test_mask_to_source_frames_monai_reader(mr):
    """A mask computed on the volume MONAI loads from the series maps back to the same pixels."""
    from monai.transforms import LoadImage

    image = LoadImage(reader="PydicomReader", image_only=True)(os.path.dirname(mr[0].filename))
    mask = (np.asarray(image) > 500).astype(np.uint8)
    frames = mask_to_source_frames(mask, image.affine.numpy(), mr)
    expected = np.stack([s.pixel_array > 500 for s in sort_source_datasets(mr)]).astype(np.uint8)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(frames, expected)


def test_mask_to_source_frames_photo(photo):
    mask = np.zeros((photo.Rows, photo.Columns), np.uint8)
    mask[3:9, 5:11] = 1
    np.testing.assert_array_equal(mask_to_source_frames(mask, None, [photo]), mask[None])
    with pytest.raises(ValueError, match="does not fit"):
        mask_to_source_frames(mask.T, None, [photo])


# --- inference handler ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["slices", "enhanced"])
def test_handler_glioma_from_monai_loaded_series(mr, tmp_path, source):
    """DICOM series -> MONAI load + RAS orientation -> the bundle's prediction writer -> SEG + SR in the source grid.

    ``slices``: single-frame slices read by MONAI's PydicomReader; ``enhanced``: the same slices as one multi-frame
    (Legacy Converted Enhanced MR) file, read by ``common.dicom.DicomSeriesReader``: the SEG has one frame per source
    frame."""
    import torch
    from ignite.engine import Engine
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, LoadImaged, Orientationd, SelectItemsd

    from common.dicom import DicomSeriesReader
    from common.handlers import DicomResultWriter, SegClassPredictionWriter, collect_case_results

    if source == "slices":
        folder, reader = os.path.dirname(mr[0].filename), "PydicomReader"
    else:
        folder, reader = str(tmp_path / "enhanced"), DicomSeriesReader()
        enhanced = write_enhanced_mr([ds.filename for ds in mr], os.path.join(folder, "enhanced.dcm"))
    preprocessing = Compose(
        [
            LoadImaged("image", reader=reader, image_only=True, ensure_channel_first=True),
            Orientationd("image", axcodes="RAS"),
            SelectItemsd(["image", "case", "dicom_series"], allow_missing_keys=True),
        ]
    )
    data = [
        {"image": folder, "case": "dcm_case", "dicom_series": folder},
        {"image": folder, "case": "nifti_like_case"},  # no DICOM source: skipped
    ]
    loader = DataLoader(Dataset(data, preprocessing), batch_size=1)

    def infer(engine, batch):
        image = batch["image"]
        seg = torch.where(image[:, :1] > 500, 10.0, -10.0)  # "tumour" = bright voxels
        return {"pred": {"seg": seg, "idh": torch.tensor([[0.8473]])}}

    out = str(tmp_path / "predictions")
    engine = Engine(infer)
    SegClassPredictionWriter(out, preprocessing, regions=["tumour"], cls_task="idh").attach(engine)
    with open(os.path.join(REPO, "bundles", "glioma_seg_idh", "configs", "metadata.json")) as f:
        version = json.load(f)["version"]
    DicomResultWriter(out, "glioma_seg_idh", version, codes=bundle_codes("glioma_seg_idh")).attach(engine)
    handed_over = collect_case_results(engine)
    engine.run(loader)

    # the hand-over: both cases, the DICOM source only where the input was DICOM, masks in the input's grid
    assert set(handed_over) == {"dcm_case", "nifti_like_case"}
    assert handed_over["dcm_case"].source == folder and handed_over["nifti_like_case"].source is None
    assert handed_over["dcm_case"].segments == ["tumour"] and handed_over["dcm_case"].masks.shape[1:] == MR_SHAPE[::-1]
    results = engine.state.dicom_results["dcm_case"]
    assert results[:2] == [os.path.join(out, "dcm_case", f) for f in ("seg.dcm", "sr.dcm")]
    captures = results[2:]  # Secondary Captures of the key slices (all segmented ones: at most 5 here)
    assert captures and all(os.path.basename(p).startswith("sc_") for p in captures)

    assert not os.path.exists(os.path.join(out, "nifti_like_case", "seg.dcm"))
    seg_path, sr_path = (os.path.join(out, "dcm_case", f) for f in ("seg.dcm", "sr.dcm"))
    assert_valid(seg_path)
    assert_valid(sr_path)
    seg = pydicom.dcmread(seg_path)
    sources = sort_source_datasets(mr)
    if source == "slices":
        expected = np.stack([s.pixel_array > 500 for s in sources])
        pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
            source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True
        )
    else:
        expected = enhanced.pixel_array > 500  # (frames, rows, columns) in the file's frame order
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == enhanced.SeriesInstanceUID
        pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_frame(
            source_sop_instance_uid=enhanced.SOPInstanceUID,
            source_frame_numbers=list(range(1, int(enhanced.NumberOfFrames) + 1)),
            combine_segments=True,
        )
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(pixels, expected.astype(pixels.dtype))
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("glioma_seg_idh", version)
    shown = [int(os.path.basename(p)[3:6]) for p in captures]  # sc_<frame>.dcm
    assert shown == key_frames(expected, len(expected)) and len(shown) == min(5, int(expected.any(axis=(1, 2)).sum()))
    for frame, path in zip(shown, captures):
        source_ds = sources[frame] if source == "slices" else enhanced
        assert_secondary_capture(path, source_ds, expected[frame][..., None], None if source == "slices" else frame)
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in captures}) == 1
    sr = pydicom.dcmread(sr_path)
    values = num_values(sr)
    prob = 1 / (1 + np.exp(-0.8473))
    assert values["IDH_MUT_PROB"] == (pytest.approx(prob, abs=1e-6), "1")
    voxel_mm3 = 0.9 * 1.1 * 2.5
    assert values["118565006"] == (pytest.approx(expected.sum() * voxel_mm3, rel=1e-6), "mm3")
    refs = {r.ReferencedSOPInstanceUID for i in sr_items(sr) if i.ValueType == "IMAGE" for r in i.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in refs


def test_handler_fundus_photo(photo, tmp_path):
    import torch
    from ignite.engine import Engine

    from common.handlers import DicomResultWriter, FundusPredictionWriter

    rgb = torch.as_tensor(photo.pixel_array).permute(2, 0, 1)[None].float() / 255
    disc = torch.zeros(photo.Rows, photo.Columns, dtype=torch.bool)
    disc[14:34, 20:44] = True
    cup = torch.zeros_like(disc)
    cup[20:28, 28:36] = True
    logits = torch.where(torch.stack([disc, cup])[None], 10.0, -10.0)
    batch = {"image": rgb, "case": ["eye1"], "dicom_series": [photo.filename]}
    pred = {
        "seg": logits,
        "vcdr": torch.tensor([0.4]),
        "glaucoma": torch.tensor([0.2]),
        "glaucoma_fused": torch.tensor([0.3]),
    }
    engine = Engine(lambda e, b: {"pred": pred})
    out = str(tmp_path / "predictions")
    FundusPredictionWriter(out, cls_task="glaucoma", segments=("optic_disc", "optic_cup")).attach(engine)
    DicomResultWriter(out, "fundus_glaucoma", "0.3.1", codes=bundle_codes("fundus_glaucoma")).attach(engine)
    engine.run([batch])
    seg_path, sr_path = (os.path.join(out, "eye1", f) for f in ("seg.dcm", "sr.dcm"))
    assert_valid(seg_path)
    assert_valid(sr_path)
    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["optic_disc", "optic_cup"]
    frames = seg.pixel_array.reshape(-1, photo.Rows, photo.Columns).astype(bool)
    np.testing.assert_array_equal(frames[0], disc.numpy())
    np.testing.assert_array_equal(frames[1], cup.numpy())
    sr = pydicom.dcmread(sr_path)
    texts = {i.ConceptNameCodeSequence[0].CodeValue: i.get("TextValue") for i in sr_items(sr) if i.ValueType == "TEXT"}
    assert (texts["111001"], texts["111003"]) == ("fundus_glaucoma", "0.3.1")  # Algorithm Name / Version
    values = num_values(sr)
    assert values["VCDR"] == (pytest.approx(0.4), "{ratio}")
    assert values["GLAUCOMA_PROB"] == (pytest.approx(1 / (1 + np.exp(-0.3)), abs=1e-6), "1")
    assert engine.state.dicom_results["eye1"] == [seg_path, sr_path, os.path.join(out, "eye1", "sc.dcm")]
    assert_secondary_capture(os.path.join(out, "eye1", "sc.dcm"), photo, np.stack([disc.numpy(), cup.numpy()], -1))
    sc = pydicom.dcmread(os.path.join(out, "eye1", "sc.dcm"))
    assert sc.PatientOrientation == photo.get("PatientOrientation", "") and sc.ImageLaterality == photo.ImageLaterality

    # secondary_capture=False: SEG + SR only
    out2 = str(tmp_path / "no_sc")
    engine = Engine(lambda e, b: {"pred": pred})
    FundusPredictionWriter(out2, cls_task="glaucoma", segments=("optic_disc", "optic_cup")).attach(engine)
    DicomResultWriter(out2, "fundus_glaucoma", "0.3.1", codes=bundle_codes("fundus_glaucoma"),
                      secondary_capture="false").attach(engine)
    engine.run([batch])
    assert [os.path.basename(p) for p in engine.state.dicom_results["eye1"]] == ["seg.dcm", "sr.dcm"]
    assert not os.path.exists(os.path.join(out2, "eye1", "sc.dcm"))


def test_handler_factors_and_slices(mr, photo, tmp_path):
    """Writers without masks: per-image risk factors (SR only, codes and UCUM units from the bundle's config) and
    per-slice probabilities aggregated per volume at the end of the run (study maximum + one group per slice)."""
    import torch
    from ignite.engine import Engine

    from common.handlers import DicomResultWriter, FactorPredictionWriter, SlicePredictionWriter

    with open(os.path.join(REPO, "bundles", "cmr_fundus", "configs", "factors.json")) as f:
        factors = [f for f in json.load(f)["factors"] if f["name"] in ("sex", "age", "sbp", "bmi")]
    names = [f["name"] for f in factors]
    values = {"sex": float(np.log(0.7 / 0.3)), "age": 58.25, "sbp": 128.5, "bmi": 23.75}
    preds = {name: torch.tensor([[values[name]], [0.0]]) for name in names}
    batch = {"image_id": ["img1", "img2"], "dicom_series": [photo.filename, ""]}  # img2: no DICOM source
    engine = Engine(lambda e, b: {"pred": preds, "label": {"image_id": b["image_id"]}})
    out = tmp_path / "factors_out"
    FactorPredictionWriter(str(out), factors).attach(engine)
    DicomResultWriter(str(out), "cmr_fundus", "0.1.0", codes=bundle_codes("cmr_fundus")).attach(engine)
    engine.run([batch])
    assert not (out / "img2").exists()
    sr_path = str(out / "img1" / "sr.dcm")
    assert_valid(sr_path)
    assert not (out / "img1" / "seg.dcm").exists()
    assert_secondary_capture(str(out / "img1" / "sc.dcm"), photo, np.zeros((photo.Rows, photo.Columns, 0), bool))
    assert num_values(pydicom.dcmread(sr_path)) == {
        "MALE_SEX_PROB": (pytest.approx(0.7), "1"),
        "30525-0": (pytest.approx(58.25), "a"),
        "8480-6": (pytest.approx(128.5), "mm[Hg]"),
        "39156-5": (pytest.approx(23.75), "kg/m2"),
    }

    series_dir = tmp_path / "series" / "caseA"
    write_mr_series(str(series_dir), seed=3)
    slices = torch.tensor([2, 3, 4, 5])
    logits = torch.logit(slices.float() / 20)
    batch = {"dicom_series": [str(series_dir)] * 4}
    engine = Engine(
        lambda e, b: {
            "pred": {"cls": logits},
            "label": {"case": ["caseA"] * 4, "slice": slices},
            "image": torch.zeros(4, 1, 8, 8),
        }
    )
    out = tmp_path / "slices_out"
    SlicePredictionWriter(str(out), n_overlays=0, measurement="tumour_probability").attach(engine)
    DicomResultWriter(str(out), "brats_mtl", "0.1.0", codes=bundle_codes("brats_mtl")).attach(engine)
    engine.run([batch])
    sr_path = str(out / "caseA" / "sr.dcm")
    assert_valid(sr_path)
    sr = pydicom.dcmread(sr_path)
    probs = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in sr_items(sr)
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "TUMOUR_PROB"
    ]
    assert probs == [pytest.approx(v) for v in (0.25, 0.1, 0.15, 0.2, 0.25)]  # study max, then slices 2..5
    # no masks: one SC of the middle slice (4 of 0..7), referencing it
    assert [os.path.basename(p) for p in sorted(glob.glob(str(out / "caseA" / "sc*.dcm")))] == ["sc_004.dcm"]
    series = sort_source_datasets(read_series(str(series_dir)))
    assert_secondary_capture(str(out / "caseA" / "sc_004.dcm"), series[4], np.zeros((32, 32, 0), bool))


def test_handler_needs_codes_for_new_segments_and_units(mr, tmp_path):
    """A new bundle's segment without codes, or a unit that is not UCUM, is one clear error before any file is
    written; a probability or a UCUM-unit measurement without codes gets a private concept."""
    from ignite.engine import Engine

    from common.handlers import CaseResult, DicomResultWriter, Measurement, PredictionWriter

    folder = os.path.dirname(mr[0].filename)
    affine = source_grid_affine(sort_source_datasets(mr))
    masks = np.zeros((1, *MR_SHAPE[::-1]), bool)
    masks[0, 10:20, 10:20, 2:4] = True

    def run(result: CaseResult, codes: dict | None) -> str:
        out = tmp_path / result.case
        engine = Engine(lambda e, b: PredictionWriter.publish(e, result))
        DicomResultWriter(str(out), "new_bundle", "0.0.1", codes=codes).attach(engine)
        engine.run([0])
        return str(out / result.case)

    lesion = CaseResult(
        "c1",
        folder,
        ["lesion"],
        masks,
        affine,
        measurements={"malignancy_probability": Measurement(0.25)},
        segment_measurements={"lesion": {"diameter": Measurement(12.5, "mm")}},
    )
    with pytest.raises(ValueError, match="segments#lesion"):
        run(lesion, None)
    assert not (tmp_path / "c1").exists()
    codes = {
        "segments": {
            "lesion": {
                "category": ["SCT", "49755003", "Morphologically abnormal structure"],
                "type": ["SCT", "52988006", "Lesion"],
            }
        }
    }
    written = run(lesion, codes)
    for name in ("seg.dcm", "sr.dcm"):
        assert_valid(os.path.join(written, name))
    values = num_values(pydicom.dcmread(os.path.join(written, "sr.dcm")))
    assert values["MALIGNANCY_PROBA"] == (pytest.approx(0.25), "1")  # private concept, value kept to 16 chars
    assert values["DIAMETER"] == (pytest.approx(12.5), "mm")
    seg = pydicom.dcmread(os.path.join(written, "seg.dcm"))
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    in_words = CaseResult("c2", folder, measurements={"age": Measurement(40.0, "years")})
    with pytest.raises(ValueError, match="measurements#age"):
        run(in_words, codes)


@pytest.mark.slow
def test_glioma_bundle_inference_writes_seg_and_sr(mr, tmp_path):
    """monai.bundle inference of glioma_seg_idh on a DICOM series with ``--dicom_output True`` (untrained weights)."""
    import torch
    from monai.bundle import ConfigParser

    from tests.bundle_cli import bundle_configs, run_bundle

    small = {"features": [4, 8, 16], "patch_size": 16, "sw_batch_size": 16}
    parser = ConfigParser()
    parser.read_config(str(bundle_configs("glioma_seg_idh") / "inference.json"))
    parser.update(small)
    torch.manual_seed(0)
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    folder = os.path.dirname(mr[0].filename)
    datalist = [{"t1": folder, "t1ce": folder, "flair": folder, "case": "mr1", "dicom_series": folder}]
    out = tmp_path / "pred"
    overrides = {"bundle_root": str(root), "output_dir": str(out), "datalist": datalist, **small}
    run_bundle(
        "glioma_seg_idh",
        "inference.json",
        {**overrides, "dicom_output": "True", "load_transforms#0#reader": "PydicomReader"},
    )
    seg_path, sr_path = str(out / "mr1" / "seg.dcm"), str(out / "mr1" / "sr.dcm")
    assert_valid(seg_path)
    assert_valid(sr_path)
    row = json.loads((out / "mr1" / "mr1_idh.json").read_text())
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr[0].SeriesInstanceUID
    values = num_values(sr)
    assert values["IDH_MUT_PROB"] == (pytest.approx(row["idh_probability"], abs=1e-6), "1")
    assert values["118565006"] == (pytest.approx(row["tumour_mm3"], abs=1e-3), "mm3")
    # the SEG holds as many tumour pixels as the NIfTI mask has voxels (same grid, resampled exactly)
    sources = sort_source_datasets(mr)
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True
    )
    assert int((pixels > 0).sum()) == row["tumour_voxels"]


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])
def test_seg_and_sr_on_pydicom_test_files(name, tmp_path):
    """Real-scanner single-slice sources from pydicom's bundled test data."""
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file(name))
    labels = (source.pixel_array > np.percentile(source.pixel_array, 90)).astype(np.uint8)[None]
    seg = write_segmentation(
        [source], labels, ["tumour"], "glioma_seg_idh", "0.1.0", str(tmp_path / "seg.dcm"), segment_table=SEG_TABLE
    )
    sr_path = str(tmp_path / "sr.dcm")
    write_measurement_report(
        [source],
        sr_path,
        "glioma_seg_idh",
        "0.1.0",
        measurements={"idh_probability": 0.5},
        segmentation=seg,
        segment_measurements={"tumour": {"volume": 10.0}},
        measurement_table=M_TABLE,
    )
    assert_valid(str(tmp_path / "seg.dcm"))
    assert_valid(sr_path)
    assert pydicom.dcmread(str(tmp_path / "seg.dcm")).ReferencedSeriesSequence[0].SeriesInstanceUID == (
        source.SeriesInstanceUID
    )
    assert num_values(pydicom.dcmread(sr_path))["118565006"] == (10.0, "mm3")
