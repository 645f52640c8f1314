"""cmr_fundus end to end through the monai.bundle CLI on synthetic fundus photographs: train -> evaluate ->
inference, the sepl/independent/moe strategies, resume after a kill, bad input, bundle properties, metadata,
TorchScript export and torchrun."""

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

from common.data import FactorTable, generate_cmr_fundus_like
from tests.bundle_cli import REPO, bundle_configs, run_bundle

BUNDLE = "cmr_fundus"
CFG = bundle_configs(BUNDLE)
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
# a tiny network at 32 px so a CPU epoch takes well under a second
SMALL = {
    "image_size": 32,
    "min_image_size": 32,
    "batch_size": 4,
    "encoder_channels": [8, 8, 16, 16],
    "expert_dim": 8,
    "hidden_dim": 8,
    "progress_bar": False,
}
FACTORS = FactorTable(json.loads((CFG / "factors.json").read_text())["factors"])


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return generate_cmr_fundus_like(tmp_path_factory.mktemp("fundus_demo"), n_patients=12, size=48, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("cmr_bundle")
    proc = run_bundle(
        BUNDLE, "train.json", {"dataset_dir": str(data_dir), "bundle_root": str(root), "epochs": 2, **SMALL}
    )
    assert f"epoch 1: training tasks {FACTORS.names}" in _log(proc)
    return root


@pytest.mark.slow
def test_train_saves_model_and_resume_state_and_logs_every_factor(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    assert [c.name for c in models.glob("resume_*.pt")] == ["resume_checkpoint_epoch=2.pt"]
    state = torch.load(models / "resume_checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "weighting", "trainer"} <= set(state)
    assert any(".attention." in k for k in state["network"])  # default strategy: SePL with prior attention
    sig = json.loads((models / "resume_signature.json").read_text())
    assert sig["strategy"] == "sepl" and [f["name"] for f in sig["factors"]] == FACTORS.names


@pytest.mark.slow
def test_evaluate_writes_every_factor_in_original_units(trained, data_dir):
    out = trained / "eval_out"
    run_bundle(
        BUNDLE,
        ["train.json", "evaluate.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(trained), "output_dir": str(out), **SMALL},
    )
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(data_dir / "factors.csv")))
    assert metrics["n_images"] == 24 and metrics["n_patients"] == 12
    for f in FACTORS:
        keys = [f"{f.name}_auc", f"{f.name}_auc_ci_low", f"{f.name}_auc_ci_high"] if f.is_binary else [
            f"{f.name}_mae", f"{f.name}_rmse", f"{f.name}_mae_ci_low", f"{f.name}_mae_ci_high"]  # fmt: skip
        assert set(keys) <= set(metrics), f.name
        assert metrics[f"{f.name}_n"] == sum(r[f.column] != "" for r in rows), f.name
    # the metric is the mean absolute error of the written predictions, in years, over the images with a known age
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(preds) == 24
    errors = [abs(float(p["age"]) - float(p["age_true"])) for p in preds if p["age_true"] != ""]
    assert metrics["age_mae"] == pytest.approx(np.mean(errors), rel=1e-3)
    assert 20 < np.mean([float(p["sbp"]) for p in preds]) < 300  # mmHg, not a scaled value


@pytest.mark.slow
def test_inference_on_a_folder_of_photographs(trained, data_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("p000_left.png", "p001_right.png", "p002_left.png"):
        shutil.copy(data_dir / "images" / name, folder / name)
    out = tmp_path / "pred"
    run_bundle(
        BUNDLE,
        "inference.json",
        {"dataset_dir": str(folder), "bundle_root": str(trained), "output_dir": str(out), **SMALL},
    )
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["image_id"] for r in rows] == ["p000_left", "p001_right", "p002_left"]
    for r in rows:
        assert 0.0 <= float(r["sex_probability"]) <= 1.0 and r["sex_prediction"] in ("0", "1")
        assert all(f.name in r for f in FACTORS if not f.is_binary)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["independent", "moe"])
def test_baseline_strategies_by_override(strategy, data_dir, tmp_path):
    over = {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 1, "strategy": strategy, **SMALL}
    log = _log(run_bundle(BUNDLE, "train.json", over))
    assert f"epoch 1: training tasks {FACTORS.names}" in log
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)  # a state dict
    assert any(k.startswith("independent_heads.") for k in weights) == (strategy == "independent")
    assert any(k.startswith("gated_heads.") for k in weights) == (strategy == "moe")
    assert not any(".attention." in k for k in weights)  # neither baseline sees the priors
    if strategy == "moe":  # evaluate.json builds the same architecture from --strategy and loads the weights
        run_bundle(BUNDLE, ["train.json", "evaluate.json"], {**over, "output_dir": str(tmp_path / "eval")})
        assert "sbp_mae" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    epochs = 40
    overrides = {
        "dataset_dir": str(data_dir),
        "bundle_root": str(tmp_path),
        "epochs": epochs,
        "val_interval": 100,
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


def _damaged_copy(data_dir: Path, tmp_path: Path, damage: str) -> tuple[Path, list[str]]:
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    rows = list(csv.DictReader(open(bad / "factors.csv")))
    if damage == "sbp412":
        rows[4]["sbp"] = "412"
        expected = ["factors.csv", "row 6", "sbp=412 is outside the plausible range [60, 260] mmHg"]
    elif damage == "missing_image":
        (bad / "images" / rows[3]["image"]).unlink()
        expected = ["factors.csv", "row 5", f"{rows[3]['image']} is listed but does not exist"]
    else:
        for r in rows:
            r["ldl"] = "120"
        expected = ["factors.csv", "columns ['ldl'] are not factors of the table"]
    with open(bad / "factors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return bad, expected


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["sbp412", "missing_image", "unknown_factor"])
def test_bad_input_gives_one_clear_error(damage, data_dir, tmp_path):
    bad, expected = _damaged_copy(data_dir, tmp_path, damage)
    over = {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL}
    proc = run_bundle(BUNDLE, "train.json", over, check=False)
    assert proc.returncode != 0
    assert "DatasetError" in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_bad_input_excluded_and_counted_when_the_config_says_so(data_dir, tmp_path):
    bad, _ = _damaged_copy(data_dir, tmp_path, "sbp412")
    over = {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), "epochs": 1, "on_invalid": "exclude", **SMALL}
    log = _log(run_bundle(BUNDLE, "train.json", over))
    assert "sbp=412 is outside the plausible range [60, 260] mmHg; value excluded (missing)" in log
    assert "excluded {'sbp value': 1} (on_invalid='exclude')" in log
    assert (tmp_path / "b" / "models" / "model.pt").is_file()


def test_workflow_properties_complete(data_dir):
    from monai.bundle import ConfigWorkflow

    for cfg, kind in (("train.json", "train"), ("inference.json", "infer")):
        wf = ConfigWorkflow(
            config_file=str(CFG / cfg),
            meta_file=str(CFG / "metadata.json"),
            workflow_type=kind,
            logging_file=str(CFG / "logging.conf"),
            dataset_dir=str(data_dir),
            min_image_size=32,
        )
        wf.initialize()
        assert not wf.check_properties(), f"{cfg}: missing properties {wf.check_properties()}"


def test_metadata_valid_and_lists_every_default_factor():
    meta = json.loads((CFG / "metadata.json").read_text())
    if SCHEMA.exists():
        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"]
    assert (CFG.parent / "LICENSE").is_file() and (CFG.parent / "docs" / "README.md").is_file()
    assert list(meta["network_data_format"]["outputs"]) == FACTORS.names
    for f in FACTORS:
        channel = meta["network_data_format"]["outputs"][f.name]["channel_def"]["0"]
        assert (f.unit in channel) and (("logit" in channel) == f.is_binary)


def test_train_evaluate_inference_networks_agree():
    from monai.bundle import ConfigParser

    shapes = []
    for cfg in ("train.json", "inference.json"):  # evaluate.json is merged over train.json: it has no network
        parser = ConfigParser()
        parser.read_config(str(CFG / cfg))
        net = parser.get_parsed_content("network_def")
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    assert shapes[0] == shapes[1]


def test_data_set_configs_merge_over_every_workflow(tmp_path):
    """odir5k.json / les_av.json replace the factor table and the file layout of train, evaluate and inference."""
    from monai.bundle import ConfigParser

    for extra, names in (
        ("odir5k.json", ["age", "sex", "diabetes", "hypertension"]),
        ("les_av.json", ["age", "sex", "sbp", "dbp"]),
    ):
        for cfgs in (["train.json"], ["train.json", "evaluate.json"], ["inference.json"]):
            parser = ConfigParser()
            parser.read_config([str(CFG / c) for c in (*cfgs, extra)])
            assert parser.get_parsed_content("factor_names") == names, (cfgs, extra)


@pytest.mark.slow
def test_torchscript_export(trained, tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
        "--ckpt_file", str(trained / "models" / "model.pt"), "--meta_file", str(CFG / "metadata.json"),
        "--config_file", str(CFG / "inference.json"), "--bundle_root", str(trained), "--key_in_ckpt", "model",
    ]  # fmt: skip
    cmd += [x for k, v in SMALL.items() for x in (f"--{k}", json.dumps(v))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.jit.load(str(ts))
    out = model(torch.randn(2, 3, 32, 32))
    assert list(out) == FACTORS.names and all(v.shape == (2, 1) for v in out.values())


@pytest.mark.slow
def test_torchrun_two_processes(data_dir, tmp_path):
    proc = run_bundle(
        BUNDLE,
        ["train.json", "multi_gpu_train.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 2, **SMALL},
        torchrun=2,
    )
    log = _log(proc)
    assert "rank 0: epoch 2: training tasks" in log and "rank 1: epoch 2: training tasks" in log
    models = tmp_path / "models"
    assert (models / "model.pt").is_file()
    assert [p.name for p in models.glob("resume_*.pt")] == ["resume_checkpoint_epoch=2.pt"]
    assert log.count("Saved checkpoint at epoch: 2") == 1
