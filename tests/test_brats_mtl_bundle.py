"""brats_mtl end to end through the monai.bundle CLI on synthetic data: train -> evaluate -> inference,
strategies, resume after a kill, bad input, bundle properties, metadata, TorchScript export and torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch

from common.data import generate_brats_like
from tests.bundle_cli import REPO, bundle_configs, run_bundle

CFG = bundle_configs("brats_mtl")
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
# a tiny network and image size so a CPU epoch takes seconds
SMALL = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mask_patch_size": 8}
METRIC_KEYS = {"cls_auc", "cls_auc_ci_low", "cls_auc_ci_high", "cls_accuracy", "mim_mse", "n_slices", "n_cases"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats_demo")
    generate_brats_like(out, n_cases=10, shape=(32, 32, 12), seed=3)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """A bundle root with a model trained for 2 epochs (mtl, uncertainty weighting)."""
    root = tmp_path_factory.mktemp("bundle")
    proc = run_bundle(
        "brats_mtl", "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(root), "epochs": 2, "weighting_name": "uw", **SMALL},
    )
    assert "epoch 1: training tasks ['cls', 'mim']" in proc.stdout + proc.stderr
    return root


def _epoch(state: dict) -> int:
    """Completed epochs recorded in a checkpoint's ignite trainer state."""
    return state["trainer"]["iteration"] // state["trainer"]["epoch_length"]


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_writes_best_model_resume_state_and_task_logs(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    ckpts = list(models.glob("resume_*.pt"))
    assert len(ckpts) == 1 and ckpts[0].name.endswith("=2.pt")
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "weighting", "trainer"} <= set(state)
    assert _epoch(state) == 2
    # UW's log-variances were trained (moved away from their initial 0)
    assert float(state["weighting"]["log_vars"].abs().sum()) > 0
    assert any((trained / "logs").iterdir()), "TensorBoard event files expected"


@pytest.mark.slow
def test_evaluate_writes_metrics_json(trained, data_dir):
    out = trained / "eval_out"
    run_bundle("brats_mtl", ["train.json", "evaluate.json"], {"dataset_dir": str(data_dir), "bundle_root": str(trained), "output_dir": str(out), **SMALL})
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["n_cases"] == 10 and metrics["n_slices"] > 10
    assert 0.0 <= metrics["cls_auc"] <= 1.0 and 0.0 <= metrics["cls_accuracy"] <= 1.0
    assert metrics["cls_auc_ci_low"] <= metrics["cls_auc"] <= metrics["cls_auc_ci_high"]
    assert metrics["mim_mse"] > 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == metrics["n_slices"]


@pytest.mark.slow
def test_evaluate_on_held_out_split_only(trained, data_dir):
    out = trained / "eval_test"
    run_bundle(
        "brats_mtl", ["train.json", "evaluate.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(trained), "output_dir": str(out), "eval_split": "test", **SMALL},
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1 <= metrics["n_cases"] < 10


@pytest.mark.slow
def test_inference_writes_probabilities_and_overlays(trained, data_dir, tmp_path):
    # inference needs no segmentation: remove the masks from a copy of two cases
    unlabelled = tmp_path / "unlabelled"
    for case in sorted(p for p in data_dir.iterdir() if p.is_dir())[:2]:
        (unlabelled / case.name).mkdir(parents=True)
        for f in case.iterdir():
            if not f.name.endswith("_seg.nii.gz"):
                (unlabelled / case.name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "pred"
    run_bundle(
        "brats_mtl", "inference.json",
        {"dataset_dir": str(unlabelled), "bundle_root": str(trained), "output_dir": str(out), "n_overlays": 3, **SMALL},
    )
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert rows and {r["case"] for r in rows} == {p.name for p in unlabelled.iterdir()}
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["label"] == "" for r in rows)
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, expected",
    [("stl", ["epoch 1: training tasks ['cls']"]),
     ("pretrain_finetune", ["epoch 1: training tasks ['mim']", "epoch 2: training tasks ['cls']"])],
)
def test_strategies_by_override(strategy, expected, data_dir, tmp_path):
    proc = run_bundle(
        "brats_mtl", "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 2, "strategy": strategy, **SMALL},
    )
    log = _log(proc)
    for line in expected:
        assert line in log
    state = torch.load(next((tmp_path / "models").glob("resume_*.pt")), map_location="cpu", weights_only=False)
    assert _epoch(state) == 2
    if strategy == "stl":
        assert "train_loss_mim" not in log and "train_loss_cls" in log


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    epochs = 30  # long enough that the kill lands mid-run (an epoch takes well under a second here)
    overrides = {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": epochs, "weighting_name": "dwa",
                 "progress_bar": False, **SMALL}
    cfg_args = []
    for k, v in overrides.items():
        cfg_args += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
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
    assert epoch_saved < epochs, "the run must be interrupted before it finished"
    res = run_bundle("brats_mtl", "train.json", overrides)
    log = _log(res)
    assert f"resuming training from {saved[-1]}" in log
    assert "Engine run resuming from iteration" in log
    assert f"epoch {epoch_saved}: training tasks" not in log  # finished epochs are not trained again
    assert f"epoch {epoch_saved + 1}: training tasks" in log
    state = torch.load(models / f"resume_checkpoint_epoch={epochs}.pt", map_location="cpu", weights_only=False)
    assert _epoch(state) == epochs
    # DWA rolls its history before every epoch but the first, as in an uninterrupted run: state was restored
    assert int(state["weighting"]["epochs_done"]) == epochs - 1


@pytest.mark.slow
def test_checkpoint_of_other_run_is_not_resumed(trained, data_dir, tmp_path):
    root = tmp_path / "copy"
    (root / "models").mkdir(parents=True)
    for f in (trained / "models").iterdir():
        (root / "models" / f.name).write_bytes(f.read_bytes())
    proc = run_bundle(
        "brats_mtl", "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(root), "epochs": 1, "strategy": "stl", **SMALL},
    )
    assert "not resuming from" in _log(proc)


@pytest.mark.slow
def test_bad_input_gives_one_clear_error(data_dir, tmp_path):
    bad = tmp_path / "bad"
    case = sorted(p for p in data_dir.iterdir() if p.is_dir())[0]
    for c in sorted(p for p in data_dir.iterdir() if p.is_dir())[:4]:
        (bad / c.name).mkdir(parents=True)
        for f in c.iterdir():
            (bad / c.name / f.name).write_bytes(f.read_bytes())
    (bad / case.name / f"{case.name}_t1ce.nii.gz").unlink()
    proc = run_bundle("brats_mtl", "train.json", {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), **SMALL}, check=False)
    assert proc.returncode != 0
    assert "DatasetError" in proc.stderr and case.name in proc.stderr and f"{case.name}_t1ce" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_bundle("brats_mtl", "train.json", {"dataset_dir": str(empty), "bundle_root": str(tmp_path / "b"), **SMALL}, check=False)
    assert proc.returncode != 0 and "DatasetError" in proc.stderr and str(empty) in proc.stderr


def test_workflow_properties_complete(data_dir):
    from monai.bundle import ConfigWorkflow

    for cfg, kind in (("train.json", "train"), ("inference.json", "infer")):
        wf = ConfigWorkflow(config_file=str(CFG / cfg), meta_file=str(CFG / "metadata.json"), workflow_type=kind,
                            logging_file=str(CFG / "logging.conf"), dataset_dir=str(data_dir))
        wf.initialize()
        assert not wf.check_properties(), f"{cfg}: missing properties {wf.check_properties()}"


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
    assert inp["num_channels"] == len(parser["modalities"]) and inp["spatial_shape"] == [parser["image_size"]] * 2
    with torch.no_grad():
        out = net(torch.randn(2, inp["num_channels"], *inp["spatial_shape"]))
    assert set(out) == set(fmt["outputs"]), "every network output must be described in network_data_format"
    for name, spec in fmt["outputs"].items():
        assert out[name].shape[1] == spec["num_channels"], name
        if len(spec["spatial_shape"]) > 1:
            assert list(out[name].shape[2:]) == spec["spatial_shape"], name


def test_train_evaluate_inference_networks_agree():
    """train.json and the standalone inference.json build the same architecture (same state-dict keys and shapes)."""
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
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
        "--ckpt_file", str(trained / "models" / "model.pt"), "--meta_file", str(CFG / "metadata.json"),
        "--config_file", str(CFG / "inference.json"), "--bundle_root", str(trained), "--key_in_ckpt", "model",
    ]
    cmd += [x for k, v in SMALL.items() for x in (f"--{k}", str(v))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.jit.load(str(ts))
    out = model(torch.randn(1, 2, 32, 32))
    assert out["cls"].shape == (1, 1) and out["mim"].shape == (1, 2, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["ew", "pcgrad"])
def test_torchrun_two_processes(weighting, data_dir, tmp_path):
    proc = run_bundle(
        "brats_mtl", ["train.json", "multi_gpu_train.json"],
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 2, "weighting_name": weighting,
         "batch_size": 8, **SMALL},
        torchrun=2,
    )
    log = _log(proc)
    assert "rank 0: epoch 2: training tasks" in log and "rank 1: epoch 2: training tasks" in log
    models = tmp_path / "models"
    assert (models / "model.pt").is_file()
    assert [p.name for p in models.glob("resume_*.pt")] == ["resume_checkpoint_epoch=2.pt"]
    assert log.count("Saved checkpoint at epoch: 2") == 1  # written by rank 0 only


@pytest.mark.slow
def test_too_few_samples_for_one_batch_is_an_error(data_dir, tmp_path):
    proc = run_bundle(
        "brats_mtl", "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 1, "batch_size": 4096, **SMALL},
        check=False,
    )
    assert proc.returncode != 0 and "yields no batch" in proc.stderr


@pytest.mark.slow
def test_mlflow_tracking_logs_every_task(data_dir, tmp_path):
    """`--tracking configs/mlflow_tracking.json` logs each task's loss and weight and the validation metrics."""
    mlflow = pytest.importorskip("mlflow")
    run_bundle(
        "brats_mtl", "train.json",
        {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 3, "weighting_name": "uw",
         "tracking": str(CFG / "mlflow_tracking.json"), **SMALL},
    )
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs
    logged = set().union(*(r.data.metrics for r in runs))
    assert {"loss_cls", "loss_mim", "weight_cls", "weight_mim", "train_loss_cls", "val_cls_auc"} <= logged
    history = client.get_metric_history(runs[0].info.run_id, "weight_mim")
    assert len({round(m.value, 6) for m in history}) > 1  # UW's weight moves during training
