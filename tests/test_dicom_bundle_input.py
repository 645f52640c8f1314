"""Bundle inference on DICOM input through the real ``monai.bundle`` CLI: a case converted to DICOM (with
``common.dicom.write_images``) gives the same outputs as the NIfTI/JPEG original, in the source's space."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from common.data import generate_brats_like
from common.dicom import nifti_case_to_dicom, read_series, write_photo
from common.errors import DatasetError
from tests.bundle_cli import bundle_configs, run_bundle
from tests.bundle_specs import SPECS
from tests.dicom_sources import write_enhanced_mr
from tests.dicom_validate import DCIODVFY, dciodvfy_errors, dciodvfy_report


def _unlabelled_pair(data_dir: Path, dst: Path) -> tuple[str, str]:
    """Copy one case without its mask to ``dst`` and add its DICOM conversion as case ``<case>_dicom``."""
    case = sorted(p for p in data_dir.iterdir() if p.is_dir())[0]
    (dst / case.name).mkdir(parents=True)
    for f in case.iterdir():
        if not f.name.endswith("_seg.nii.gz"):
            shutil.copy(f, dst / case.name / f.name)
    nifti_case_to_dicom(case, dst / f"{case.name}_dicom", modalities=["t1", "t1ce", "t2", "flair"])
    return case.name, f"{case.name}_dicom"


@pytest.mark.slow
def test_glioma_seg_idh_inference_on_dicom_study(tmp_path, bundle_data, trained_bundle):
    small = SPECS["glioma_seg_idh"].small
    data, root = bundle_data("glioma_seg_idh"), trained_bundle("glioma_seg_idh")
    unlabelled = tmp_path / "unlabelled"
    nifti, dicom = _unlabelled_pair(data, unlabelled)
    # the same study with every series as one enhanced (multi-frame) MR image, as current scanners export it
    enhanced = f"{nifti}_enhanced"
    for series in sorted(p for p in (unlabelled / dicom).iterdir() if p.is_dir()):
        write_enhanced_mr(sorted(series.glob("*.dcm")), unlabelled / enhanced / series.name / "enhanced.dcm")
    out = tmp_path / "pred"
    run_bundle("glioma_seg_idh", "inference.json",
               {"dataset_dir": str(unlabelled), "bundle_root": str(root), "output_dir": str(out), "dicom_output": True,
                **small})
    rows = {r["case"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert set(rows) == {nifti, dicom, enhanced}
    # enhanced = same voxels and geometry as the single-frame series: identical results
    assert rows[enhanced]["idh_probability"] == rows[dicom]["idh_probability"]
    from_enhanced = nib.load(out / enhanced / f"{enhanced}_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(from_enhanced.dataobj),
                                  np.asarray(nib.load(out / dicom / f"{dicom}_seg.nii.gz").dataobj))
    t1_enhanced = pydicom.dcmread(unlabelled / enhanced / "t1" / "enhanced.dcm")
    seg = pydicom.dcmread(out / enhanced / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1_enhanced.SeriesInstanceUID
    assert int(seg.NumberOfFrames) <= int(t1_enhanced.NumberOfFrames)  # empty frames are omitted
    for case in (dicom, enhanced):
        captures = sorted(p.name for p in (out / case).glob("sc_*.dcm"))  # Secondary Captures of key slices
        assert 1 <= len(captures) <= 5
        for name in ("seg.dcm", "sr.dcm", *captures):
            if DCIODVFY is not None:
                assert dciodvfy_errors(str(out / case / name)) == [], dciodvfy_report(str(out / case / name))
    from_nifti = nib.load(out / nifti / f"{nifti}_seg.nii.gz")
    from_dicom = nib.load(out / dicom / f"{dicom}_seg.nii.gz")
    source = read_series(unlabelled / dicom / "t1")  # the first configured modality: the SEG's reference
    np.testing.assert_allclose(from_dicom.affine, source.affine, atol=1e-4)  # written in the source's space
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    a, b = np.asarray(from_nifti.dataobj), np.asarray(from_dicom.dataobj)
    assert a.shape == b.shape == source.volume.shape
    # the DICOM voxels are the NIfTI ones quantised to 16 bits: the masks agree (all but a rare boundary voxel)
    assert np.mean(a == b) > 0.999
    assert float(rows[dicom]["idh_probability"]) == pytest.approx(float(rows[nifti]["idh_probability"]), abs=1e-3)
    assert json.loads((out / dicom / f"{dicom}_idh.json").read_text())["case"] == dicom


@pytest.mark.slow
def test_brats_mtl_inference_on_dicom_study(tmp_path, bundle_data, trained_bundle):
    small = SPECS["brats_mtl"].small
    data, root = bundle_data("brats_mtl"), trained_bundle("brats_mtl")
    unlabelled = tmp_path / "unlabelled"
    nifti, dicom = _unlabelled_pair(data, unlabelled)
    out = tmp_path / "pred"
    run_bundle("brats_mtl", "inference.json",
               {"dataset_dir": str(unlabelled), "bundle_root": str(root), "output_dir": str(out), **small})
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["slice"]] = float(r["probability"])
    assert set(by_case) == {nifti, dicom}
    assert by_case[dicom].keys() == by_case[nifti].keys()  # the same slices kept
    for key, p in by_case[nifti].items():
        assert by_case[dicom][key] == pytest.approx(p, abs=1e-3)


@pytest.mark.slow
def test_fundus_glaucoma_inference_on_dicom_photo(tmp_path, bundle_data, trained_bundle):
    small = SPECS["fundus_glaucoma"].small
    data, root = bundle_data("fundus_glaucoma"), trained_bundle("fundus_glaucoma")
    src = tmp_path / "in" / "images"
    src.mkdir(parents=True)
    shutil.copy(data / "images" / "fundus_000.jpg", src / "photo.jpg")
    rgb = np.asarray(Image.open(src / "photo.jpg").convert("RGB"))
    write_photo(rgb, src / "photo_dicom.dcm", patient_id="photo")
    out = tmp_path / "pred"
    run_bundle("fundus_glaucoma", "inference.json",
               {"dataset_dir": str(tmp_path / "in"), "bundle_root": str(root), "output_dir": str(out), **small})
    rows = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert set(rows) == {"photo", "photo_dicom"}
    for key in rows["photo"]:
        if key != "case" and "photo" not in rows["photo"][key]:  # not the output file names
            assert rows["photo_dicom"][key] == rows["photo"][key], key  # same pixels, same results
    for kind in ("disc", "cup"):
        jpg = np.asarray(Image.open(out / "photo" / f"photo_{kind}.png"))
        dcm = np.asarray(Image.open(out / "photo_dicom" / f"photo_dicom_{kind}.png"))
        assert dcm.shape == jpg.shape == rgb.shape[:2]  # rows stay vertical: (H, W) as the photograph
        assert np.array_equal(dcm, jpg)


def test_cmr_fundus_inference_loading_reads_dicom_photo(tmp_path):
    """cmr_fundus: the inference datalist and loading transforms (not the network) give a .dcm photograph the
    same tensor as the PNG it was converted from."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 120, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "eye.png")
    write_photo(rgb, tmp_path / "eye_dicom.dcm")
    parser = ConfigParser()
    parser.read_config(str(bundle_configs("cmr_fundus") / "inference.json"))
    parser["dataset_dir"] = str(tmp_path)
    datalist = {r["case"]: r for r in parser.get_parsed_content("datalist")}
    assert datalist["eye_dicom"]["dicom_series"] == str(tmp_path / "eye_dicom.dcm")
    load = parser.get_parsed_content("load_transforms")
    png, dcm = Compose(load)(datalist["eye"]), Compose(load)(datalist["eye_dicom"])
    assert png["image"].shape == dcm["image"].shape
    assert np.array_equal(png["image"].numpy(), dcm["image"].numpy())


@pytest.mark.parametrize("bundle", ["glioma_seg_idh", "brats_mtl"])
def test_modality_rules_override_in_config(bundle, tmp_path):
    """The inference configs' ``modality_rules`` key changes how a study's series are mapped to modalities."""
    case = tmp_path / "src"
    generate_brats_like(case, n_cases=1, shape=(16, 16, 8), seed=1)
    study = tmp_path / "data" / "study1"
    nifti_case_to_dicom(next(p for p in case.iterdir() if p.is_dir()), study)
    for modality, description in (("t1", "SE_A"), ("t1ce", "SE_B"), ("t2", "SE_C"), ("flair", "SE_D")):
        for path in (study / modality).glob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.SeriesDescription, ds.SequenceName = description, ""
            ds.save_as(path)
    parser = ConfigParser()
    parser.read_config(str(bundle_configs(bundle) / "inference.json"))
    parser["dataset_dir"] = str(tmp_path / "data")
    with pytest.raises(RuntimeError) as err:  # monai.bundle wraps the expression's error
        parser.get_parsed_content("datalist")  # the default rule knows no 'SE_x'
    assert isinstance(err.value.__cause__, DatasetError)
    assert re.search(r"no series matches modality '\w+'; series seen: .*'SE_A'", str(err.value.__cause__))
    parser = ConfigParser()
    parser.read_config(str(bundle_configs(bundle) / "inference.json"))
    parser["dataset_dir"] = str(tmp_path / "data")
    parser["modality_rules"] = [{"modality": m, "pattern": f"se {x}"} for m, x in
                                (("t1", "a"), ("t1ce", "b"), ("t2", "c"), ("flair", "d"))]
    (record,) = parser.get_parsed_content("datalist")
    for modality in parser.get_parsed_content("modalities"):
        assert record[modality] == str(study / modality)
    assert record["dicom_study"] == str(study)
