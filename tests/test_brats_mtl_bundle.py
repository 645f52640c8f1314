"""brats_mtl end to end through the monai.bundle CLI on synthetic data: train -> evaluate -> inference,
strategies, a checkpoint of another run, too few samples, MLflow tracking. The contract every bundle keeps (resume
after a kill, bad input, bundle properties, metadata, TorchScript export, torchrun) is in test_bundle_contract.py."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.bundle_cli import bundle_configs, evaluate_bundle, log_of, run_bundle
from tests.bundle_specs import SPECS

BUNDLE = "brats_mtl"
CFG = bundle_configs(BUNDLE)
SMALL = SPECS[BUNDLE].small
METRIC_KEYS = {
    "cls_auc", "cls_auc_ci_low", "cls_auc_ci_high", "cls_accuracy", "cls_ece", "cls_brier",
    "mim_mse", "n_slices", "n_cases",
}


def _epoch(state: dict) -> int:
    """Completed epochs recorded in a checkpoint's ignite trainer state."""
    return state["trainer"]["iteration"] // state["trainer"]["epoch_length"]


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
    assert float(state["weighting"]["scalarizer.log_var"].abs().sum()) > 0
    assert any((trained / "logs").iterdir()), "TensorBoard event files expected"


@pytest.mark.slow
def test_evaluate_writes_metrics_json(trained, data_dir):
    out = trained / "eval_out"
    metrics = evaluate_bundle(BUNDLE, trained, data_dir, out, **SMALL)
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
    metrics = evaluate_bundle(BUNDLE, trained, data_dir, out, eval_split="test", **SMALL)
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
    log = log_of(proc)
    for line in expected:
        assert line in log
    state = torch.load(next((tmp_path / "models").glob("resume_*.pt")), map_location="cpu", weights_only=False)
    assert _epoch(state) == 2
    if strategy == "stl":
        assert "train_loss_mim" not in log and "train_loss_cls" in log


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
    assert "not resuming from" in log_of(proc)


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
