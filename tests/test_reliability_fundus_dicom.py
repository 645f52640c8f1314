"""Issue 18 (nothing silent), fundus and DICOM part: fundus_glaucoma checks every input before the locator trains;
image folders count what they skip; palette photographs are converted, not called grayscale; a blank frame is a
"no fundus image" result without probabilities; the DICOM objects the project writes pass dciodvfy."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.data import build_fundus_datalist, list_fundus_images, select_split
from common.data.synthetic_fundus import generate_fundus_like
from common.inferers import DiscCropInferer, central_green_std
from tests.bundle_cli import run_bundle
from tests.bundle_specs import SPECS
from tests.dicom_validate import DCIODVFY, dciodvfy_errors

BUNDLE = "fundus_glaucoma"
SMALL = SPECS[BUNDLE].small


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory) -> Path:
    return generate_fundus_like(tmp_path_factory.mktemp("fundus"), n_images=12, size=(160, 176), seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["grayscale_validation_image", "empty_training_disc"])
def test_inputs_checked_before_the_locator_trains(damage, fundus_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(fundus_dir, bad)
    datalist = build_fundus_datalist(bad, label_column="glaucoma")
    split = "validation" if damage == "grayscale_validation_image" else "train"
    records = select_split(datalist, split, 0.15, 0.2, 0, split_key="split")  # train.json's defaults
    assert records, f"the split has no {split} image"
    case = records[0]["case"]
    if damage == "grayscale_validation_image":  # checked before only after the locator stage (57 s on the demo)
        image = Path(records[0]["image"])
        Image.open(image).convert("L").save(image)
        expected = "is a grayscale image"
    else:  # found before only by the first crop of the second stage
        disc = Path(records[0]["disc"])
        Image.fromarray(np.zeros_like(np.asarray(Image.open(disc)))).save(disc)
        expected = "mask 'disc' is empty"
    root = tmp_path / "bundle"
    proc = run_bundle(
        BUNDLE, "train.json",
        {"dataset_dir": str(bad), "bundle_root": str(root), "locator_epochs": 1, "epochs": 1, **SMALL},
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"case '{case}'" in log and expected in log, log[-3000:]
    assert "locator_loss" not in log and not (root / "models" / "locator.pt").exists()  # no training step ran


def test_image_folder_counts_skipped_files(fundus_dir, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.asarray(Image.open(fundus_dir / "images" / "fundus_000.jpg"))
    Image.fromarray(rgb).save(folder / "a.jpg")
    Image.fromarray(rgb).save(folder / "b.webp")  # read (Pillow decodes WebP)
    Image.fromarray(rgb).save(folder / "c.gif")
    (folder / "notes.txt").write_text("x")
    (folder / "more").mkdir()
    Image.fromarray(rgb).save(folder / "more" / "d.jpg")
    Image.fromarray(rgb).save(folder / "more" / "e.jpg")
    (folder / ".DS_Store").write_text("")
    with caplog.at_level(logging.WARNING):
        records = list_fundus_images(folder)
    assert [r["case"] for r in records] == ["a", "b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    msg = warnings[0]
    for text in ("2 image(s) read", "4 file(s) skipped", "2 with an unsupported suffix", ".gif: 1", ".txt: 1",
                 "2 in sub-folders", "more/: 2"):
        assert text in msg, msg


def test_labelled_folder_counts_skipped_files(fundus_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(fundus_dir, data)
    (data / "images" / "old").mkdir()
    shutil.copy(data / "images" / "fundus_000.jpg", data / "images" / "old" / "x.jpg")
    with caplog.at_level(logging.WARNING):
        records = build_fundus_datalist(data, label_column="glaucoma")
    assert len(records) == 12
    assert any("1 file(s) skipped" in r.getMessage() and "old/: 1" in r.getMessage() for r in caplog.records)


class _NoLocator(nn.Module):
    def forward(self, x):
        raise AssertionError("the locator must not see a blank frame")


class _CropNet(nn.Module):
    def forward(self, x):
        s = x.shape[-1]
        return {"seg": torch.full((x.shape[0], 2, s, s), 10.0), "glaucoma": torch.zeros(x.shape[0], 1)}


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_blank_frame_has_no_result_and_skips_the_locator(value):
    frame = torch.full((1, 3, 120, 140), value) + 0.003 * torch.randn(1, 3, 120, 140)  # JPEG-like noise
    out = DiscCropInferer(_NoLocator(), cls_task="glaucoma", locator_size=32, crop_size=16, vcdr_logistic=(5.0, -2.0))(
        frame.clamp(0, 1), _CropNet()
    )
    assert out["fundus_found"].tolist() == [0.0] and out["disc_found"].tolist() == [0.0]
    for key in ("glaucoma", "glaucoma_vcdr", "glaucoma_fused", "vcdr"):
        assert torch.isnan(out[key]).all(), key
    assert (out["seg"] < 0).all()  # nothing segmented


def test_fundus_statistic_separates_photographs_from_blank_frames(fundus_dir):
    photos = torch.stack([torch.as_tensor(np.array(Image.open(p)), dtype=torch.float32).permute(2, 0, 1) / 255
                          for p in sorted((fundus_dir / "images").iterdir())])
    assert central_green_std(photos).min() > 0.04
    assert central_green_std(torch.full((2, 3, 50, 60), 0.7)).max() < 1e-6
    with pytest.raises(ValueError, match="images must be"):
        central_green_std(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match="min_fundus_std"):
        DiscCropInferer(_NoLocator(), min_fundus_std=-1)


@pytest.mark.slow
def test_inference_palette_webp_and_blank_frames_through_the_cli(tmp_path, bundle_data, trained_bundle):
    data, root = bundle_data(BUNDLE), trained_bundle(BUNDLE)
    src = tmp_path / "in" / "images"
    src.mkdir(parents=True)
    photo = Image.open(data / "images" / "fundus_000.jpg")
    photo.quantize(64).save(src / "palette.png")  # a colour palette PNG: converted, not called grayscale
    photo.convert("RGBA").save(src / "opaque_rgba.png")  # opaque alpha: dropped
    photo.save(src / "photo.webp")
    Image.new("RGB", (200, 180), (255, 255, 255)).save(src / "white.jpg")
    Image.new("RGB", (200, 180), (0, 0, 0)).save(src / "black.png")
    photo.save(src / "photo.gif")  # skipped, counted
    out = tmp_path / "pred"
    proc = run_bundle(BUNDLE, "inference.json",
                      {"dataset_dir": str(src.parent), "bundle_root": str(root), "output_dir": str(out), **SMALL})
    log = proc.stdout + proc.stderr
    assert "1 file(s) skipped" in log and ".gif: 1" in log, log[-3000:]
    with (out / "predictions.csv").open() as handle:
        rows = {r["case"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"palette", "opaque_rgba", "photo", "white", "black"}
    for case in ("palette", "opaque_rgba", "photo"):
        assert 0 <= float(rows[case]["glaucoma_probability"]) <= 1, rows[case]
        assert not rows[case]["flag"].startswith("no fundus image")
    for case in ("white", "black"):
        row = rows[case]
        assert row["flag"].startswith("no fundus image") and "disc not detected" not in row["flag"], row
        assert row["glaucoma_prediction"] == "no fundus image"
        for key in ("glaucoma_probability", "glaucoma_probability_head", "glaucoma_probability_vcdr", "vcdr"):
            assert row[key] == "", (case, key, row[key])
        assert f"image '{case}': no fundus image" in log


def test_case_result_of_a_blank_frame(tmp_path):
    """The in-memory hand-over (CaseResult) of a blank frame: the flag, no measurement values."""
    from ignite.engine import Engine

    from common.handlers import NO_FUNDUS, FundusPredictionWriter

    frame = torch.ones(1, 3, 60, 70)
    pred = DiscCropInferer(_NoLocator(), cls_task="glaucoma", locator_size=32, crop_size=16)(frame, _CropNet())
    engine = Engine(lambda e, b: None)
    writer = FundusPredictionWriter(str(tmp_path), cls_task="glaucoma")
    writer.attach(engine)
    engine.state.output = {"pred": pred}
    engine.state.batch = {"image": frame, "case": ["white"]}
    engine.state.case_results = []
    writer(engine)
    (result,) = engine.state.case_results
    assert result.flags and result.flags[0].startswith(NO_FUNDUS) and len(result.flags) == 1
    assert all(m.value is None for m in result.measurements.values())
    assert all(m.value is None for seg in result.segment_measurements.values() for m in seg.values())
    assert not result.masks.any()


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_written_dicom_passes_dciodvfy(tmp_path):
    from scipy.spatial.transform import Rotation

    from common.dicom.write_images import write_mr_series, write_photo
    from tests.dicom_sources import write_enhanced_mr, write_fundus_photo
    from tests.dicom_sources import write_mr_series as write_test_series

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [12345.678901, -20.0, 30.0]  # a large coordinate too: every DS value <= 16 characters
    files = write_mr_series(np.random.default_rng(0).random((20, 24, 3)) * 100, affine, tmp_path / "nifti2dcm", "t1")
    c, s = np.cos(0.3), np.sin(0.3)
    slices = write_test_series(str(tmp_path / "oblique"), orientation=(c, s, 0.0, 0.0, 0.0, -1.0), seed=1)
    write_enhanced_mr(slices, str(tmp_path / "enhanced.dcm"))
    rgb = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photos = [write_photo(rgb, tmp_path / "op.dcm"), write_photo(rgb, tmp_path / "op_jpeg.dcm", jpeg=True),
              write_fundus_photo(str(tmp_path / "test_photo.dcm"))]
    for path in [*files, slices[0], slices[-1], tmp_path / "enhanced.dcm", *photos]:
        errors = dciodvfy_errors(str(path))
        assert not errors, f"{path}:\n" + "\n".join(errors)


CMR_SMALL = {"image_size": 32, "min_image_size": 32, "batch_size": 4, "encoder_channels": [8, 8, 16, 16],
             "expert_dim": 8, "hidden_dim": 8, "progress_bar": False}


@pytest.mark.slow
def test_cmr_fundus_blank_frame_and_palette_photograph_through_the_cli(tmp_path):
    from common.data import generate_cmr_fundus_like

    data = generate_cmr_fundus_like(tmp_path / "data", n_patients=12, size=48, seed=3)
    root = tmp_path / "bundle"
    run_bundle("cmr_fundus", "train.json", {"dataset_dir": str(data), "bundle_root": str(root), "epochs": 1,
                                            **CMR_SMALL})
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.open(data / "images" / "p000_left.png").convert("RGB")
    photo.save(folder / "photo.png")
    photo.quantize(64).save(folder / "palette.png")
    Image.new("RGB", (48, 48), (255, 255, 255)).save(folder / "white.png")
    (folder / "old").mkdir()
    photo.save(folder / "old" / "x.png")
    out = tmp_path / "pred"
    proc = run_bundle("cmr_fundus", "inference.json",
                      {"dataset_dir": str(folder), "bundle_root": str(root), "output_dir": str(out), **CMR_SMALL})
    log = proc.stdout + proc.stderr
    assert "1 file(s) skipped" in log and "old/: 1" in log, log[-3000:]
    with (out / "predictions.csv").open() as handle:
        rows = {r["image_id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"photo", "palette", "white"}
    for case in ("photo", "palette"):
        assert 0.0 <= float(rows[case]["sex_probability"]) <= 1.0 and rows[case]["flag"] == ""
    white = rows["white"]
    assert white["flag"].startswith("no fundus image") and white["sex_prediction"] == "no fundus image"
    assert white["sex_probability"] == "" and white["age"] == ""
    assert "image 'white': no fundus image" in log
