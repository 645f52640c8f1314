"""fundus_glaucoma end to end through the monai.bundle CLI on synthetic photographs: train (locator, then the
multi-task crop model) -> evaluate -> inference, strategies (joint, cooperative, single-task), resume after a kill,
bad input, a flagged image without a disc, bundle properties, metadata, TorchScript export and torchrun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from common.data import build_fundus_datalist, select_split
from common.data.synthetic_fundus import generate_fundus_like
from tests.bundle_cli import REPO, TINY_FUNDUS, bundle_configs, check_workflow_properties, run_bundle

BUNDLE = "fundus_glaucoma"
CFG = bundle_configs(BUNDLE)
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SMALL = TINY_FUNDUS
METRIC_KEYS = {
    "disc_dice",
    "cup_dice",
    "vcdr_mae",
    "glaucoma_auc",
    "glaucoma_auc_ci_low",
    "glaucoma_auc_ci_high",
    "n_images",
}


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return generate_fundus_like(tmp_path_factory.mktemp("fundus_demo"), n_images=16, size=(160, 176), seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("fundus_bundle")
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(root), "locator_epochs": 2, "epochs": 2,
         "val_interval": 1, **SMALL},
    )
    assert "epoch 1: training tasks ['seg', 'glaucoma']" in _log(proc)
    return root


@pytest.mark.slow
def test_train_saves_locator_model_and_vcdr_model(trained, data_dir):
    models = trained / "models"
    for name in ("locator.pt", "model.pt", "glaucoma_score.json", "resume_checkpoint_epoch=2.pt",
                 "locator_resume_checkpoint_epoch=2.pt"):
        assert (models / name).is_file(), name
    score = json.loads((models / "glaucoma_score.json").read_text())
    assert score["vcdr_logistic"][0] > 0  # larger cups, more glaucoma (synthetic data are built so)
    assert score["sources"] == ["head", "vcdr"] and score["strategy"] == "mtl"
    state = torch.load(models / "locator.pt", weights_only=True)  # the locator's weights alone (one-item save_dict)
    assert any(k.startswith("conv_0.") for k in state) and not any(k.startswith("encoder.") for k in state)


@pytest.mark.slow
def test_evaluate_writes_issue_metrics(trained, data_dir):
    out = trained / "eval"
    run_bundle(BUNDLE, ["train.json", "evaluate.json"],
               {"dataset_dir": str(data_dir), "bundle_root": str(trained), "eval_split": "test", **SMALL})
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    n_test = len(select_split(build_fundus_datalist(data_dir, label_column="glaucoma"), "test", 0.15, 0.2, 0, split_key="split"))
    assert metrics["n_images"] == n_test == 4
    assert 0 <= metrics["disc_dice"] <= 1 and 0 <= metrics["cup_dice"] <= 1 and metrics["vcdr_mae"] >= 0
    assert metrics["dice_mean"] == pytest.approx((metrics["disc_dice"] + metrics["cup_dice"]) / 2)
    for k in ("glaucoma_head_auc", "glaucoma_vcdr_auc"):
        assert k in metrics


@pytest.mark.slow
def test_inference_writes_full_size_masks_overlay_and_csv(trained, data_dir, tmp_path):
    src = tmp_path / "in" / "images"
    src.mkdir(parents=True)
    shutil.copy(data_dir / "images" / "fundus_000.jpg", src)
    Image.open(data_dir / "images" / "fundus_001.jpg").resize((211, 190)).save(src / "other_size.png")
    Image.fromarray(np.zeros((180, 200, 3), np.uint8)).save(src / "blank.png")  # no disc to find
    out = tmp_path / "pred"
    proc = run_bundle(BUNDLE, "inference.json",
                      {"dataset_dir": str(tmp_path / "in"), "bundle_root": str(trained), "output_dir": str(out),
                       **SMALL})
    rows = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert set(rows) == {"fundus_000", "other_size", "blank"}
    for case, size in (("fundus_000", (176, 160)), ("other_size", (211, 190)), ("blank", (200, 180))):
        for kind in ("disc", "cup", "overlay"):
            img = Image.open(out / case / f"{case}_{kind}.png")
            assert img.size == size, (case, kind)
        if case != "blank":
            assert 0 <= float(rows[case]["glaucoma_probability_head"]) <= 1
        assert json.loads((out / case / f"{case}_glaucoma.json").read_text())["case"] == case
    # a black frame is no fundus photograph (issue 18): no probabilities, one clear flag
    assert rows["blank"]["flag"].startswith("no fundus image") and rows["blank"]["glaucoma_probability_head"] == ""
    assert "image 'blank'" in _log(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, active, trainer",
    [
        ("stl_seg", "['seg']", "MultiTaskTrainer"),
        ("stl_cls", "['glaucoma']", "MultiTaskTrainer"),
        ("cool", "['seg', 'glaucoma']", "CooperativeTrainer"),
    ],
)
def test_strategies(strategy, active, trainer, data_dir, tmp_path):
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "locator_epochs": 1, "epochs": 1,
         "val_interval": 1, "strategy": strategy, "task_affinity_interval": 1, **SMALL},
    )
    affinity = tmp_path / "logs" / "task_affinity.json"
    assert affinity.is_file() == (strategy == "cool")  # measured for two-task training only
    if strategy == "cool":
        assert json.loads(affinity.read_text())["tasks"] == ["seg", "glaucoma"]
    log = _log(proc)
    assert f"epoch 1: training tasks {active}" in log
    assert f"engine.{trainer} - INFO - Epoch[1] Complete" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    signature = json.loads((tmp_path / "models" / "resume_signature.json").read_text())
    assert signature["strategy"] == strategy
    # the fused glaucoma score of a single-task model uses only what it was trained for
    sources = json.loads((tmp_path / "models" / "glaucoma_score.json").read_text())["sources"]
    assert sources == {"stl_seg": ["vcdr"], "stl_cls": ["head"], "cool": ["head", "vcdr"]}[strategy]
    assert (signature["cooperative"] is not None) == (strategy == "cool")


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    epochs = 40
    overrides = {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "locator_epochs": 2, "epochs": epochs,
                 "val_interval": 100, "progress_bar": False, **SMALL}
    cfg_args = [x for k, v in overrides.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CFG / "train.json"), *cfg_args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    models = tmp_path / "models"
    try:
        deadline = time.time() + 300
        while not list(models.glob("resume_*.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = sorted(models.glob("resume_*.pt"), key=lambda p: int(p.stem.split("=")[-1]))
    assert saved, "no epoch checkpoint was written before the kill"
    epoch_saved = int(saved[-1].stem.split("=")[-1])
    assert epoch_saved < epochs
    log = _log(run_bundle(BUNDLE, "train.json", overrides))
    # the locator finished before the kill: it is restored, not trained again; the crop model continues
    assert "locator_resume_checkpoint_epoch=2.pt" in log
    assert f"resuming training from {saved[-1]}" in log
    assert f"epoch {epoch_saved}: training tasks" not in log and f"epoch {epoch_saved + 1}: training tasks" in log
    assert (models / f"resume_checkpoint_epoch={epochs}.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["grayscale", "rgba", "tiny", "mask_size", "missing_mask", "label"])
def test_bad_input_gives_one_clear_error(damage, data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    name = "fundus_002"
    image = bad / "images" / f"{name}.jpg"
    if damage == "grayscale":
        Image.open(image).convert("L").save(image)
        expected = [f"{name}.jpg", "is a grayscale image"]
    elif damage == "rgba":
        image.unlink()
        image = bad / "images" / f"{name}.png"
        rgba = Image.open(data_dir / "images" / f"{name}.jpg").convert("RGBA")
        rgba.putalpha(128)  # half transparent: refused (an opaque alpha channel is dropped since issue 18)
        rgba.save(image)
        expected = [f"{name}.png", "has 4 channels"]
    elif damage == "tiny":
        Image.open(image).resize((60, 50)).save(image)
        expected = [f"{name}.jpg", "smaller than the minimum side 128"]
    elif damage == "mask_size":
        cup = bad / "masks" / f"{name}_cup.png"
        Image.open(cup).resize((100, 90)).save(cup)
        expected = [f"{name}_cup.png", "mask 'cup' size 90x100 differs from the image size 160x176"]
    elif damage == "missing_mask":
        (bad / "masks" / f"{name}_disc.png").unlink()
        expected = [f"{name}_disc.png", "'disc' mask is missing"]
    else:
        rows = list(csv.reader((bad / "labels.csv").open()))
        for row in rows[1:]:
            if row[0] == name:
                row[1] = "yes"
        with (bad / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        expected = ["labels.csv", "glaucoma='yes' is not 1, 0 or empty"]
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), "locator_epochs": 1, "epochs": 1,
         "val_fraction": 0.5, **SMALL},
        check=False,
    )
    assert proc.returncode != 0
    assert "DatasetError" in proc.stderr and f"case '{name}'" in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


def test_workflow_properties_complete(data_dir):
    check_workflow_properties(BUNDLE, data_dir)


def test_metadata_valid_and_describes_every_output():
    meta = json.loads((CFG / "metadata.json").read_text())
    if SCHEMA.exists():
        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"]
    assert (CFG.parent / "LICENSE").is_file() and (CFG.parent / "docs" / "README.md").is_file()
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CFG / "inference.json"))
    net = parser.get_parsed_content("network_def").eval()
    fmt = meta["network_data_format"]
    inp = fmt["inputs"]["image"]
    assert inp["num_channels"] == 3 and inp["spatial_shape"] == [parser["crop_size"]] * 2
    with torch.no_grad():
        out = net(torch.randn(1, 3, *inp["spatial_shape"]))
    assert set(out) == set(fmt["outputs"])
    for name, spec in fmt["outputs"].items():
        assert out[name].shape[1] == spec["num_channels"], name
        if len(spec["spatial_shape"]) > 1:
            assert list(out[name].shape[2:]) == spec["spatial_shape"], name


def test_train_evaluate_inference_networks_agree():
    from monai.bundle import ConfigParser

    shapes = []
    for cfg in ("train.json", "inference.json"):  # evaluate.json is merged over train.json: it has no network
        parser = ConfigParser()
        parser.read_config(str(CFG / cfg))
        shapes.append(
            {
                key: {k: tuple(v.shape) for k, v in parser.get_parsed_content(key).state_dict().items()}
                for key in ("network_def", "locator_def")
            }
        )
    assert shapes[0] == shapes[1]


@pytest.mark.slow
def test_torchscript_export(trained, tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(trained / "models" / "model.pt"), "--meta_file", str(CFG / "metadata.json"),
           "--config_file", str(CFG / "inference.json"), "--bundle_root", str(trained), "--key_in_ckpt", "model"]
    cmd += [x for k, v in SMALL.items() for x in (f"--{k}", json.dumps(v))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.jit.load(str(ts))
    out = model(torch.randn(1, 3, 32, 32))
    assert out["seg"].shape == (1, 2, 32, 32) and out["glaucoma"].shape == (1, 1)


@pytest.mark.slow
def test_torchrun_two_processes(data_dir, tmp_path):
    proc = run_bundle(
        BUNDLE,
        ["train.json", "multi_gpu_train.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "locator_epochs": 2, "epochs": 2,
         "val_interval": 1, **SMALL},
        torchrun=2,
    )
    log = _log(proc)
    assert "rank 0: epoch 2: training tasks" in log and "rank 1: epoch 2: training tasks" in log
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "locator.pt").is_file()
    assert len(list(models.glob("locator*.pt"))) == 2  # locator.pt + one resume checkpoint: written once
