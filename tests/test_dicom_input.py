"""DICOM input: the test-data converters (validated by dciodvfy), series reading with its geometry checks, study
mapping by modality rules, photographs as RGB, the MONAI readers, and the datalist wiring of the bundles."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import PILReader, PydicomReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from scipy.spatial.transform import Rotation

from common.data import build_brats_datalist, build_fundus_datalist, generate_brats_like, list_fundus_images
from common.data.slices import load_case_volumes
from common.dicom import (
    DicomPhotoReader,
    DicomSeriesReader,
    ModalityRule,
    find_study_series,
    map_study_modalities,
    nifti_case_to_dicom,
    read_photo,
    read_series,
    read_study,
    write_mr_series,
    write_photo,
)
from common.errors import DatasetError
from tests.dicom_sources import write_enhanced_mr

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
DCIODVFY = shutil.which("dciodvfy")


def assert_valid(path: Path) -> None:
    """``dciodvfy`` reports no error for the file."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: run scripts/install_system.sh")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
    assert not errors, f"{path}: dciodvfy errors:\n" + "\n".join(errors)


def oblique_affine(det_sign: int = 1) -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5 * det_sign])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def world_points(volume: np.ndarray, affine: np.ndarray) -> dict[tuple, float]:
    """Voxel centre (rounded, mm) -> value, to compare volumes independently of their index order."""
    idx = np.indices(volume.shape).reshape(3, -1)
    xyz = (affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3].T.round(3)
    return {tuple(p): float(v) for p, v in zip(xyz, volume.reshape(-1))}


@pytest.fixture
def series_dir(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 1000, (20, 24, 7)).astype(np.int16)
    affine = oblique_affine()
    folder = tmp_path / "series"
    write_mr_series(volume, affine, folder, "t1")
    return folder, volume, affine


@pytest.fixture(scope="module")
def nifti_case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nifti")
    generate_brats_like(root, n_cases=1, shape=(32, 28, 10), seed=3)
    return next(p for p in sorted(root.iterdir()) if p.is_dir())


@pytest.fixture(scope="module")
def dicom_case(nifti_case, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / nifti_case.name
    nifti_case_to_dicom(nifti_case, out)
    return out


# ---------------------------------------------------------------------------------------------- converters (4)


def test_write_mr_series_valid_and_geometry(series_dir):
    folder, volume, affine = series_dir
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == volume.shape[2]
    assert_valid(files[0])
    assert_valid(files[-1])
    ds = pydicom.dcmread(files[1])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert (ds.SeriesDescription, ds.PatientPosition, ds.BodyPartExamined) == ("t1", "HFS", "BRAIN")
    lps = np.diag([-1, -1, 1, 1]) @ affine
    np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), (lps @ [0, 0, 1, 1])[:3], atol=1e-4)
    np.testing.assert_allclose(np.asarray(ds.PixelSpacing, float), [1.1, 0.9], atol=1e-5)
    assert float(ds.SliceThickness) == pytest.approx(2.5)
    assert (ds.Rows, ds.Columns) == (24, 20)


def test_write_mr_series_float_volume_uses_rescale(tmp_path):
    volume = np.linspace(-1.5, 2.5, 6 * 5 * 3, dtype=np.float32).reshape(6, 5, 3)
    files = write_mr_series(volume, np.diag([2.0, 2.0, 3.0, 1.0]), tmp_path / "s", "flair", patient_id="P1")
    assert_valid(files[0])
    series = read_series(tmp_path / "s")
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    assert np.max(np.abs(series.volume - volume)) <= slope / 2 + 1e-6


def test_write_mr_series_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="volume"):
        write_mr_series(np.zeros((4, 4)), np.eye(4), tmp_path, "t1")
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        write_mr_series(np.zeros((4, 4, 2)), sheared, tmp_path, "t1")
    with pytest.raises(ValueError, match="NaN"):
        write_mr_series(np.full((4, 4, 2), np.nan), np.eye(4), tmp_path, "t1")


@pytest.mark.parametrize("jpeg", [False, True])
def test_write_photo_valid(tmp_path, jpeg):
    rows, cols = np.mgrid[0:40, 0:56]
    rgb = np.stack([rows * 5, cols * 4, 100 + rows + cols], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
    path = write_photo(rgb, tmp_path / "photo.dcm", patient_id="eye1", jpeg=jpeg)
    assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.1" and ds.Modality == "OP"
    back = read_photo(path)
    assert back.shape == (40, 56, 3) and back.dtype == np.uint8
    if jpeg:
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        assert np.abs(back.astype(int) - rgb).mean() < 6
    else:
        assert np.array_equal(back, rgb)


def test_write_photo_grey_valid(tmp_path):
    grey = np.arange(32 * 48, dtype=np.uint32).reshape(32, 48).astype(np.uint8)
    path = write_photo(grey, tmp_path / "grey.dcm")
    assert_valid(path)
    back = read_photo(path)
    assert back.shape == (32, 48, 3) and all(np.array_equal(back[..., c], grey) for c in range(3))


def test_cli_nifti_case_and_photo(nifti_case, tmp_path):
    env_cmd = [sys.executable, "-m", "common.dicom.write_images"]
    out = tmp_path / "study"
    proc = subprocess.run(env_cmd + ["nifti-case", str(nifti_case), str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["flair", "t1", "t1ce", "t2"]
    headers = [pydicom.dcmread(next((out / m).glob("*.dcm"))) for m in folders]
    assert len({h.StudyInstanceUID for h in headers}) == 1  # one study per case
    assert len({h.SeriesInstanceUID for h in headers}) == 4
    assert {h.PatientID for h in headers} == {nifti_case.name}
    assert [h.SeriesDescription for h in headers] == folders
    assert_valid(next((out / "t2").glob("*.dcm")))

    png = tmp_path / "eye.png"
    Image.fromarray(np.full((30, 40, 3), 77, np.uint8)).save(png)
    proc = subprocess.run(env_cmd + ["photo", str(png), str(tmp_path / "eye.dcm"), "--laterality", "L"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    assert pydicom.dcmread(tmp_path / "eye.dcm").ImageLaterality == "L"
    assert_valid(tmp_path / "eye.dcm")


def test_real_lgg_case_converts_valid(tmp_path):
    case = REAL_DATA / "lgg" / "TCGA_CS_4941"
    if not case.is_dir():
        pytest.skip(f"real data not found: {case} (see ../shared/data/README.md)")
    written = nifti_case_to_dicom(case, tmp_path / "study", modalities=["flair"])
    assert_valid(written["flair"][0])
    image = nib.load(case / "TCGA_CS_4941_flair.nii.gz")
    series = read_series(tmp_path / "study" / "flair")
    np.testing.assert_allclose(series.affine, image.affine, atol=1e-4)
    assert np.array_equal(series.volume, np.asanyarray(image.dataobj).astype(np.float32))


# ---------------------------------------------------------------------------------------------- series (1)


def test_read_series_round_trip_oblique_affine(series_dir):
    folder, volume, affine = series_dir
    series = read_series(folder)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    assert np.array_equal(series.volume, volume)
    assert len(series.sop_instance_uids) == volume.shape[2] and "PixelData" not in series.datasets[0]
    # the same convention as MONAI's own DICOM reader
    reader = PydicomReader()
    array, meta = reader.get_data(reader.read(str(folder)))
    np.testing.assert_allclose(np.asarray(meta["affine"]), series.affine, atol=1e-4)
    assert np.array_equal(np.asarray(array), series.volume)


def test_read_series_left_handed_affine_same_world(tmp_path):
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 100, (6, 5, 4)).astype(np.uint16)
    affine = oblique_affine(det_sign=-1)
    write_mr_series(volume, affine, tmp_path / "s", "t2")
    series = read_series(tmp_path / "s")
    # slices are sorted along the slice normal, so the third axis is reversed, but every voxel is where it was
    assert world_points(series.volume, series.affine) == world_points(volume.astype(np.float32), affine)


def test_read_series_file_order_does_not_matter(series_dir, tmp_path):
    folder, volume, affine = series_dir
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, f in enumerate(sorted(folder.glob("*.dcm"))[::-1]):
        shutil.copy(f, shuffled / f"IM{i:03d}")  # no suffix, reversed names
    series = read_series(shuffled)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    assert np.array_equal(series.volume, volume)


@pytest.mark.parametrize("tool, option, syntax", [
    ("dcmcjpeg", "+e1", pydicom.uid.JPEGLosslessSV1),  # JPEG lossless, first-order prediction (.70)
    ("dcmcjpeg", "+el", pydicom.uid.JPEGLossless),  # JPEG lossless, any predictor (.57)
    ("dcmcjpls", "+el", pydicom.uid.JPEGLSLossless),  # JPEG-LS lossless (.80)
])
def test_read_series_lossless_compressed(series_dir, tmp_path, tool, option, syntax):
    """Series a PACS stores compressed (here by DCMTK, as a PACS would) decode to the same voxels (python-gdcm)."""
    folder, volume, affine = series_dir
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (DCMTK) is not installed: `bash scripts/install_system.sh`")
    compressed = tmp_path / "compressed"
    compressed.mkdir()
    for path in sorted(folder.glob("*.dcm")):
        subprocess.run([tool, option, str(path), str(compressed / path.name)], check=True, capture_output=True)
    assert pydicom.dcmread(next(compressed.glob("*.dcm"))).file_meta.TransferSyntaxUID == syntax
    series = read_series(compressed)
    assert np.array_equal(series.volume, read_series(folder).volume)
    assert np.allclose(series.affine, affine, atol=1e-4)


def test_read_series_multiframe_enhanced_mr(series_dir, tmp_path):
    """One multi-frame (enhanced) MR file gives the voxels and affine its single-frame slices give."""
    folder, volume, affine = series_dir
    path = tmp_path / "enhanced" / "enhanced.dcm"
    assert int(write_enhanced_mr(sorted(folder.glob("*.dcm")), path).NumberOfFrames) == volume.shape[2]
    series = read_series(path.parent)
    reference = read_series(folder)
    assert np.array_equal(series.volume, reference.volume)
    assert np.allclose(series.affine, reference.affine, atol=1e-4)
    assert series.files == [path] and len(series.datasets) == 1
    loaded = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(path.parent))
    assert np.array_equal(np.asarray(loaded), reference.volume)


def test_read_series_multiframe_errors(series_dir, tmp_path):
    folder, _, _ = series_dir
    path = tmp_path / "enhanced" / "enhanced.dcm"
    ds = write_enhanced_mr(sorted(folder.glob("*.dcm")), path)
    position = ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) + 7.0 for v in position.ImagePositionPatient]  # frame 4 off the stack
    ds.save_as(tmp_path / "enhanced" / "enhanced.dcm")
    with pytest.raises(DatasetError, match=r"enhanced\.dcm: the multi-frame image \(7 frames.*cannot be read as one "
                                           r"regularly spaced volume"):
        read_series(tmp_path / "enhanced")
    shutil.copy(next(folder.glob("*.dcm")), tmp_path / "mixed.dcm")
    both = [path, tmp_path / "mixed.dcm"]
    ds = pydicom.dcmread(both[1])
    ds.SeriesInstanceUID = pydicom.dcmread(path).SeriesInstanceUID
    ds.save_as(both[1])
    with pytest.raises(DatasetError, match=r"a multi-frame image together with 1 other file"):
        read_series(both)
    with pytest.raises(DatasetError, match=r"SC_rgb_rle_2frame\.dcm: multi-frame image \(2 frames, SOP class "
                                           r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.7\); supported are"):
        read_series([get_testdata_file("SC_rgb_rle_2frame.dcm")])


def test_read_series_pydicom_test_files():
    ct = read_series([get_testdata_file("CT_small.dcm")])
    assert ct.volume.shape == (128, 128, 1)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(ct.volume[..., 0], expected)
    assert ct.affine[0, 3] == pytest.approx(-float(ds.ImagePositionPatient[0]))  # LPS -> RAS


def test_read_series_skips_non_dicom_files_with_warning(series_dir, caplog):
    folder, volume, _ = series_dir
    (folder / "README.txt").write_text("not dicom")
    with caplog.at_level(logging.WARNING):
        series = read_series(folder)
    assert series.volume.shape == volume.shape
    assert "README.txt" in caplog.text


def _move(folder: Path, index: int, delta_mm: float) -> None:
    path = sorted(folder.glob("*.dcm"))[index]
    ds = pydicom.dcmread(path)
    normal = np.cross(np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:]))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + delta_mm * normal]
    ds.save_as(path)


def test_error_missing_slice(series_dir):
    folder, _, _ = series_dir
    (sorted(folder.glob("*.dcm"))[3]).unlink()
    with pytest.raises(DatasetError, match=r"missing slices.*slice_0002\.dcm and slice_0004\.dcm") as err:
        read_series(folder)
    assert str(folder) in str(err.value)


def test_error_duplicated_slice(series_dir):
    folder, _, _ = series_dir
    shutil.copy(sorted(folder.glob("*.dcm"))[2], folder / "copy.dcm")
    ds = pydicom.dcmread(folder / "copy.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(DatasetError, match=rf"series {folder}: duplicated slices"):
        read_series(folder)


def test_error_inconsistent_spacing(series_dir):
    folder, _, _ = series_dir
    _move(folder, 3, 0.6)  # 2.5 mm spacing: steps 3.1 and 1.9, no gap > 1.5x
    with pytest.raises(DatasetError, match=r"inconsistent slice spacing"):
        read_series(folder)


def test_error_mixed_orientations(series_dir):
    folder, _, _ = series_dir
    path = sorted(folder.glob("*.dcm"))[4]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(path)
    with pytest.raises(DatasetError, match=r"mixed orientations.*slice_0004\.dcm"):
        read_series(folder)


def test_error_other_series_in_folder(series_dir):
    folder, _, _ = series_dir
    write_mr_series(np.zeros((20, 24, 1), np.uint16), oblique_affine(), folder / "other", "t2")
    with pytest.raises(DatasetError, match=r"files of 2 series in one series folder.*'t2'"):
        read_series(folder)


def test_error_non_image_object(series_dir):
    folder, _, _ = series_dir
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    ds = pydicom.dcmread(folder / "report.dcm")
    ds.SeriesInstanceUID = pydicom.dcmread(next(folder.glob("slice_*.dcm"))).SeriesInstanceUID
    ds.save_as(folder / "report.dcm")
    with pytest.raises(DatasetError, match=r"report\.dcm: a non-image object \(Comprehensive SR\)"):
        read_series(folder)


def test_error_unsupported_transfer_syntax(series_dir):
    folder, _, _ = series_dir
    path = sorted(folder.glob("*.dcm"))[1]
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1  # a broken JPEG lossless stream
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DatasetError, match=r"slice_0001\.dcm: pixel data cannot be decoded \(transfer syntax "
                                           r"1\.2\.840\.10008\.1\.2\.4\.70"):
        read_series(folder)


def test_error_nan(series_dir):
    folder, _, _ = series_dir
    path = sorted(folder.glob("*.dcm"))[2]
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = "NaN"
    ds.RescaleIntercept = "0"
    ds.save_as(path)
    with pytest.raises(DatasetError, match=r"slice_0002\.dcm: NaN"):
        read_series(folder)


def test_error_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*no DICOM files"):
        read_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"text: no DICOM files"):
        read_series(tmp_path / "text")
    with pytest.raises(DatasetError, match="does not exist"):
        read_series(tmp_path / "nope")


def test_series_reader_in_loadimaged(series_dir, tmp_path):
    folder, volume, affine = series_dir
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "same.nii.gz")
    load = Compose([
        LoadImaged(["a", "b"], reader=DicomSeriesReader(), image_only=True),
        EnsureChannelFirstd(["a", "b"]),
        Orientationd(["a", "b"], axcodes="RAS"),
    ])
    out = load({"a": str(folder), "b": str(tmp_path / "same.nii.gz")})
    assert out["a"].shape == (1, 20, 24, 7)
    np.testing.assert_allclose(out["a"].affine.numpy(), out["b"].affine.numpy(), atol=1e-4)
    assert np.array_equal(out["a"].numpy(), out["b"].numpy().astype(np.float32))
    assert out["a"].meta["SeriesDescription"] == "t1"


def test_series_reader_list_of_files_is_one_series(series_dir):
    folder, volume, affine = series_dir
    files = []
    for i, f in enumerate(sorted(folder.glob("*.dcm"))[::-1]):  # reversed, no suffix (as PACS exports name them)
        files.append(str(f.rename(folder / f"1.2.826.0.1.{i}")))
    out = LoadImaged("a", reader=DicomSeriesReader(), image_only=True, ensure_channel_first=True)({"a": files})
    assert out["a"].shape == (1, *volume.shape)
    assert np.array_equal(out["a"][0].numpy(), volume)
    np.testing.assert_allclose(out["a"].affine.numpy(), affine, atol=1e-4)


def test_series_reader_reports_dataset_error(series_dir):
    folder, _, _ = series_dir
    sorted(folder.glob("*.dcm"))[3].unlink()
    with pytest.raises(DatasetError, match="missing slices"):  # not swallowed by LoadImage's fallback readers
        LoadImage(reader=DicomSeriesReader(), image_only=True)(str(folder))


# ---------------------------------------------------------------------------------------------- photographs (3)


def test_photo_pydicom_colour_spaces():
    reference = read_photo(get_testdata_file("SC_rgb_rle.dcm"))  # lossless RGB
    assert reference.shape == (100, 100, 3)
    for name in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"):
        rgb = read_photo(get_testdata_file(name))
        assert rgb.dtype == np.uint8 and rgb.shape == reference.shape
        assert np.abs(rgb.astype(int) - reference).mean() < 3, name


def test_photo_jpeg_lossless_decodes():
    """JPEG lossless (1.2.840.10008.1.2.4.70, decoded by python-gdcm) gives the same pixels as RLE."""
    rgb = read_photo(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    assert np.array_equal(rgb, read_photo(get_testdata_file("SC_rgb_rle.dcm")))


def test_photo_ybr_full_and_monochrome(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)
    path = write_photo(rgb, tmp_path / "rgb.dcm")
    ds = pydicom.dcmread(path)
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    assert np.abs(read_photo(tmp_path / "ybr.dcm").astype(int) - rgb).max() <= 2
    grey = write_photo(rgb[..., 1], tmp_path / "grey.dcm")
    assert np.array_equal(read_photo(grey), np.repeat(rgb[..., 1:2], 3, axis=-1))


def test_photo_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"test-SR\.dcm: not a photograph but a non-image object"):
        read_photo(get_testdata_file("test-SR.dcm"))
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless  # no decoder installed for HTJ2K
    ds.save_as(tmp_path / "htj2k.dcm")
    with pytest.raises(DatasetError, match=r"htj2k\.dcm: pixel data cannot be decoded \(transfer syntax "
                                           r"1\.2\.840\.10008\.1\.2\.4\.201"):
        read_photo(tmp_path / "htj2k.dcm")
    (tmp_path / "x.dcm").write_text("text")
    with pytest.raises(DatasetError, match="not a readable DICOM file"):
        read_photo(tmp_path / "x.dcm")


def test_photo_reader_matches_pil_layout(tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (30, 44, 3)).astype(np.uint8)
    rgb[:10] = (255, 0, 0)  # top rows red
    Image.fromarray(rgb).save(tmp_path / "p.png")
    write_photo(rgb, tmp_path / "p.dcm")
    for reverse in (False, True):
        expected = LoadImage(reader=PILReader(reverse_indexing=reverse), image_only=True,
                             ensure_channel_first=True)(str(tmp_path / "p.png"))
        loader = LoadImage(reader=DicomPhotoReader(reverse_indexing=reverse), image_only=True,
                           ensure_channel_first=True)
        got, png = loader(str(tmp_path / "p.dcm")), loader(str(tmp_path / "p.png"))
        assert got.shape == expected.shape == png.shape
        assert np.array_equal(got.numpy(), expected.numpy()) and np.array_equal(png.numpy(), expected.numpy())
    assert tuple(got.shape) == (3, 44, 30)
    bad = tmp_path / "bad.dcm"
    shutil.copy(get_testdata_file("test-SR.dcm"), bad)
    with pytest.raises(DatasetError, match="non-image object"):
        LoadImage(reader=DicomPhotoReader(reverse_indexing=False), image_only=True)(str(bad))


# ---------------------------------------------------------------------------------------------- study (2)


def _describe(folder: Path, description: str, **tags) -> None:
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.SequenceName = ""
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path)


def test_study_maps_modalities_nested(dicom_case, tmp_path):
    study = tmp_path / "study"
    names = {"t1": "T1_MPRAGE", "t1ce": "T1 post Gd", "t2": "T2W_TSE", "flair": "AX T2 FLAIR"}
    for i, (modality, description) in enumerate(names.items()):
        target = study / f"level{i % 2}" / f"series{i}"
        shutil.copytree(dicom_case / modality, target)
        _describe(target, description)
    shutil.copy(get_testdata_file("test-SR.dcm"), study / "old_report.dcm")  # non-image series: ignored
    (study / "notes.txt").write_text("x")
    mapped = map_study_modalities(study, ["t1", "t1ce", "t2", "flair"])
    assert {m: s.description for m, s in mapped.items()} == names
    assert all(Path(s.source).is_dir() for s in mapped.values())
    volumes = read_study(study, ["flair"])
    np.testing.assert_array_equal(volumes["flair"].volume, read_series(dicom_case / "flair").volume)


def test_study_contrast_agent_rule_and_flat_layout(dicom_case, tmp_path):
    study = tmp_path / "flat"
    study.mkdir()
    for modality in ("t1", "t1ce"):
        for f in (dicom_case / modality).glob("*.dcm"):
            shutil.copy(f, study / f"{modality}_{f.name}")
    for path in study.glob("t1ce_*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.SequenceName, ds.ContrastBolusAgent = "T1 3D", "", "Gadovist"
        ds.save_as(path)
    for path in study.glob("t1_*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.SequenceName = "T1 3D", ""
        ds.save_as(path)
    mapped = map_study_modalities(study, ["t1", "t1ce"])
    assert isinstance(mapped["t1ce"].source, list) and all("t1ce_" in Path(f).name for f in mapped["t1ce"].source)
    assert all(Path(f).name.startswith("t1_") for f in mapped["t1"].source)
    series = read_series(mapped["t1ce"].source)
    np.testing.assert_array_equal(series.volume, read_series(dicom_case / "t1ce").volume)


def test_study_configurable_rule(dicom_case):
    rules = [{"modality": "dark_fluid", "pattern": r"^flair$"}, ("bright", r"^t2$")]
    mapped = map_study_modalities(dicom_case, ["bright", "dark_fluid"], rules)
    assert (mapped["bright"].description, mapped["dark_fluid"].description) == ("t2", "flair")
    assert [s.description for s in find_study_series(dicom_case)] == ["flair", "t1", "t1ce", "t2"]
    with pytest.raises(ValueError, match="no rule"):
        map_study_modalities(dicom_case, ["t1"], rules)
    with pytest.raises(ValueError, match="not a regex"):
        ModalityRule("x", "(")


def test_study_errors(dicom_case, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(dicom_case / "t1", study / "a")
    shutil.copytree(dicom_case / "t2", study / "b")
    _describe(study / "b", "T1 SE")
    with pytest.raises(DatasetError, match=rf"study {study}: no series matches modality 'flair'; series seen: "
                                           r"'t1' .*'T1 SE'"):
        map_study_modalities(study, ["flair"])
    with pytest.raises(DatasetError, match=r"2 series match modality 't1': 't1' \(.*a\) and 'T1 SE' \(.*b\)"):
        map_study_modalities(study, ["t1"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no DICOM files"):
        map_study_modalities(tmp_path / "empty", ["t1"])


# ---------------------------------------------------------------------------------------------- datalists (5)


def test_brats_datalist_dicom_case(nifti_case, dicom_case, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(nifti_case, root / nifti_case.name)
    shutil.copytree(dicom_case, root / "dicom_case")
    records = {r["case"]: r for r in build_brats_datalist(root, ["flair", "t1"], require_seg=False)}
    dicom = records["dicom_case"]
    assert dicom["dicom_series"] == str(root / "dicom_case" / "flair")
    assert dicom["dicom_study"] == str(root / "dicom_case")
    assert dicom["image"] == [str(root / "dicom_case" / "flair"), str(root / "dicom_case" / "t1")]
    assert "dicom_series" not in records[nifti_case.name]  # NIfTI records unchanged
    # brats_mtl reads volumes through load_case_volumes: DICOM gives the NIfTI case's voxels
    from_dicom, _ = load_case_volumes(dicom, check_seg=False)
    from_nifti, _ = load_case_volumes(records[nifti_case.name], check_seg=False)
    assert from_dicom.shape == from_nifti.shape
    assert np.abs(from_dicom - from_nifti).max() <= 1e-4 * np.abs(from_nifti).max()  # 16-bit quantisation
    with pytest.raises(DatasetError, match="missing segmentation"):
        build_brats_datalist(root, ["flair"], require_seg=True)
    with pytest.raises(DatasetError, match="no series matches modality 't1ce'"):
        build_brats_datalist(root, ["t1ce"], require_seg=False, modality_rules=[("t1ce", "^never$")])


def test_fundus_datalists_accept_dcm(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "a.png")
    write_photo(np.zeros((20, 20, 3), np.uint8), images / "b.dcm")
    records = {r["case"]: r for r in build_fundus_datalist(tmp_path, masks={}, labels_csv=None)}
    assert records["b"]["dicom_series"] == str(images / "b.dcm") and "dicom_series" not in records["a"]
    listed = {r["case"]: r for r in list_fundus_images(images)}
    assert listed["b"]["dicom_series"] == str(images / "b.dcm")
