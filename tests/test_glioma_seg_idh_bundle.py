"""glioma_seg_idh end to end through the monai.bundle CLI on synthetic data: train -> evaluate -> inference,
single-task strategies, BraTS regions, outputs in the input's space, resume after a kill, bad input, bundle
properties, metadata, TorchScript export and torchrun."""

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
import nibabel as nib
import numpy as np
import pytest
import torch

from common.data import generate_brats_like
from tests.bundle_cli import REPO, bundle_configs, check_workflow_properties, run_bundle

BUNDLE = "glioma_seg_idh"
CFG = bundle_configs(BUNDLE)
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
# a tiny network and crop so a CPU epoch takes about a second
SMALL = {"features": [4, 8, 16], "patch_size": 16, "samples_per_case": 2, "batch_size": 4, "sw_batch_size": 16}
METRIC_KEYS = {
    "dice_mean",
    "hd95_mean",
    "idh_auc",
    "idh_auc_ci_low",
    "idh_auc_ci_high",
    "idh_balanced_accuracy",
    "n_cases",
    "n_idh_labelled",
}


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _copy_cases(src: Path, dst: Path, n: int, skip_seg: bool = False) -> list[Path]:
    cases = sorted(p for p in src.iterdir() if p.is_dir())[:n]
    for case in cases:
        (dst / case.name).mkdir(parents=True)
        for f in case.iterdir():
            if not (skip_seg and f.name.endswith("_seg.nii.gz")):
                shutil.copy(f, dst / case.name / f.name)
    if (src / "labels.csv").exists():
        shutil.copy(src / "labels.csv", dst / "labels.csv")
    return [dst / c.name for c in cases]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("glioma_demo")
    generate_brats_like(out, n_cases=10, shape=(32, 32, 12), seed=5)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("glioma_bundle")
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(root), "epochs": 2, "val_interval": 1, **SMALL},
    )
    assert "epoch 1: training tasks ['seg', 'idh']" in _log(proc)
    return root


@pytest.mark.slow
def test_train_saves_model_resume_state_and_logs_both_tasks(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    ckpts = list(models.glob("resume_*.pt"))
    assert [c.name for c in ckpts] == ["resume_checkpoint_epoch=2.pt"]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "weighting", "trainer"} <= set(state)
    assert float(state["weighting"]["log_vars"].abs().sum()) > 0  # uncertainty weighting is the default and trains


@pytest.mark.slow
def test_evaluate_writes_issue_metrics(trained, data_dir):
    out = trained / "eval_out"
    run_bundle(
        BUNDLE,
        ["train.json", "evaluate.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(trained), "output_dir": str(out), **SMALL},
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    labels = list(csv.DictReader(open(data_dir / "labels.csv")))
    assert metrics["n_cases"] == 10
    assert metrics["n_idh_labelled"] == sum(r["idh_status"] in ("mutant", "wildtype") for r in labels)
    assert 0.0 <= metrics["dice_mean"] <= 1.0 and metrics["hd95_mean"] >= 0.0
    if metrics["idh_auc"] is not None:
        assert metrics["idh_auc_ci_low"] <= metrics["idh_auc"] <= metrics["idh_auc_ci_high"]


@pytest.mark.slow
def test_inference_outputs_in_each_input_space(trained, data_dir, tmp_path):
    """A case stored in another orientation (LPS, axes flipped) gets its mask on its own grid, and the same mask
    (flipped back) as the original case; volumes larger than the training crop are covered by sliding windows."""
    unlabelled = tmp_path / "unlabelled"
    cases = _copy_cases(data_dir, unlabelled, 2, skip_seg=True)
    flipped = unlabelled / "flipped"
    flipped.mkdir()
    for f in cases[0].iterdir():
        img = nib.load(f)
        lps = img.affine @ np.array(
            [[-1, 0, 0, img.shape[0] - 1], [0, -1, 0, img.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
        data = np.asarray(img.dataobj)[::-1, ::-1].copy()
        nib.save(nib.Nifti1Image(data, lps), flipped / f.name.replace(cases[0].name, "flipped"))
    out = tmp_path / "pred"
    run_bundle(
        BUNDLE,
        "inference.json",
        {"dataset_dir": str(unlabelled), "bundle_root": str(trained), "output_dir": str(out), **SMALL},
    )
    rows = {r["case"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert set(rows) == {cases[0].name, cases[1].name, "flipped"}
    for case, row in rows.items():
        assert 0.0 <= float(row["idh_probability"]) <= 1.0 and row["idh_prediction"] in ("wildtype", "mutant")
        seg = nib.load(out / case / f"{case}_seg.nii.gz")
        src = nib.load(next((unlabelled / case).glob("*_t1.nii.gz")))
        assert seg.shape == src.shape == (32, 32, 12)  # larger than the 16x16x3 crop: not cropped
        assert np.allclose(seg.affine, src.affine)
        assert int(row["tumour_voxels"]) == int((np.asarray(seg.dataobj) > 0).sum())
        assert json.loads((out / case / f"{case}_idh.json").read_text())["case"] == case
    original = np.asarray(nib.load(out / cases[0].name / f"{cases[0].name}_seg.nii.gz").dataobj)
    moved = np.asarray(nib.load(out / "flipped" / "flipped_seg.nii.gz").dataobj)
    assert np.array_equal(original, moved[::-1, ::-1])
    assert float(rows["flipped"]["idh_probability"]) == pytest.approx(
        float(rows[cases[0].name]["idh_probability"]), abs=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy, active, inactive", [("stl_seg", "seg", "idh"), ("stl_idh", "idh", "seg")])
def test_single_task_strategies(strategy, active, inactive, data_dir, tmp_path):
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {
            "dataset_dir": str(data_dir),
            "bundle_root": str(tmp_path),
            "epochs": 1,
            "strategy": strategy,
            "val_interval": 1,
            "idh_aggregation": "mean" if strategy == "stl_idh" else "foreground",
            **SMALL,
        },
    )
    log = _log(proc)
    assert f"epoch 1: training tasks ['{active}']" in log
    assert f"train_loss_{active}" in log and f"train_loss_{inactive}" not in log
    assert (tmp_path / "models" / "model.pt").is_file()
    assert ("Key metric: val_idh_auc" if strategy == "stl_idh" else "Key metric: val_dice_mean") in log


@pytest.mark.slow
def test_brats_regions_by_override(data_dir, tmp_path):
    regions = {"wt": [1, 2, 3, 4], "tc": [1, 3, 4], "et": [4]}
    over = {
        "dataset_dir": str(data_dir),
        "bundle_root": str(tmp_path),
        "epochs": 1,
        "val_interval": 1,
        "seg_regions": regions,
        "modalities": ["flair", "t1ce"],
        **SMALL,
    }
    run_bundle(BUNDLE, "train.json", over)
    run_bundle(BUNDLE, ["train.json", "evaluate.json"], {**over, "output_dir": str(tmp_path / "eval")})
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"dice_wt", "dice_tc", "dice_et", "hd95_wt", "dice_mean"} <= set(metrics)
    assert metrics["dice_mean"] == pytest.approx(np.mean([metrics["dice_wt"], metrics["dice_tc"], metrics["dice_et"]]))


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    epochs = 40
    overrides = {
        "dataset_dir": str(data_dir),
        "bundle_root": str(tmp_path),
        "epochs": epochs,
        "val_interval": 100,
        "progress_bar": False,
        **SMALL,
    }
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
    assert f"resuming training from {saved[-1]}" in log
    assert f"epoch {epoch_saved}: training tasks" not in log and f"epoch {epoch_saved + 1}: training tasks" in log
    assert (models / f"resume_checkpoint_epoch={epochs}.pt").is_file()


def _bad_copy(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    bad = tmp_path / "bad"
    cases = _copy_cases(data_dir, bad, 4)
    return bad, cases[1]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["shape", "labels", "nan", "idh"])
def test_bad_input_gives_one_clear_error(damage, data_dir, tmp_path):
    bad, case = _bad_copy(data_dir, tmp_path)
    name = case.name
    if damage == "shape":
        target = case / f"{name}_flair.nii.gz"
        img = nib.load(target)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), target)
        expected = [f"{name}_flair.nii.gz", "shape (32, 32, 11) differs"]
    elif damage == "labels":
        target = case / f"{name}_seg.nii.gz"
        img = nib.load(target)
        seg = np.asarray(img.dataobj).copy()
        seg[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(seg, img.affine), target)
        expected = [f"{name}_seg.nii.gz", "segmentation labels [7] are outside"]
    elif damage == "nan":
        target = case / f"{name}_t1ce.nii.gz"
        img = nib.load(target)
        data = np.asarray(img.dataobj).astype(np.float32)
        data[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(data, img.affine), target)
        expected = [f"{name}_t1ce.nii.gz", "holds 1 NaN voxel"]
    else:
        text = (bad / "labels.csv").read_text().replace(f"{name},", f"{name},IDH1-R132H,", 1)
        lines = [ln if not ln.startswith(f"{name},") else f"{name},IDH1-R132H" for ln in text.splitlines()]
        (bad / "labels.csv").write_text("\n".join(lines) + "\n")
        expected = ["labels.csv", "idh_status='IDH1-R132H' is not one of"]
    proc = run_bundle(
        BUNDLE,
        "train.json",
        {
            "dataset_dir": str(bad),
            "bundle_root": str(tmp_path / "b"),
            "epochs": 1,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
            **SMALL,
        },
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
    assert inp["num_channels"] == len(parser["modalities"])
    assert inp["spatial_shape"] == [parser["patch_size"], parser["patch_size"], parser["slices"]]
    assert [inp["channel_def"][str(i)] for i in range(inp["num_channels"])] == parser["modalities"]
    with torch.no_grad():
        out = net(torch.randn(1, inp["num_channels"], *inp["spatial_shape"]))
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
        net = parser.get_parsed_content("network_def")
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    assert shapes[0] == shapes[1]


@pytest.mark.slow
def test_torchscript_export(trained, tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(trained / "models" / "model.pt"),
        "--meta_file",
        str(CFG / "metadata.json"),
        "--config_file",
        str(CFG / "inference.json"),
        "--bundle_root",
        str(trained),
        "--key_in_ckpt",
        "model",
    ]
    cmd += [x for k, v in SMALL.items() for x in (f"--{k}", json.dumps(v))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.jit.load(str(ts))
    out = model(torch.randn(1, 3, 16, 16, 3))
    assert out["seg"].shape == (1, 1, 16, 16, 3) and out["idh"].shape == (1, 1)


@pytest.mark.slow
def test_torchrun_two_processes(data_dir, tmp_path):
    proc = run_bundle(
        BUNDLE,
        ["train.json", "multi_gpu_train.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 2, "val_interval": 1, **SMALL},
        torchrun=2,
    )
    log = _log(proc)
    assert "rank 0: epoch 2: training tasks" in log and "rank 1: epoch 2: training tasks" in log
    models = tmp_path / "models"
    assert (models / "model.pt").is_file()
    assert [p.name for p in models.glob("resume_*.pt")] == ["resume_checkpoint_epoch=2.pt"]
    assert log.count("Saved checkpoint at epoch: 2") == 1
