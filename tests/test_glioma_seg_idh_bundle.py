"""glioma_seg_idh end to end through the monai.bundle CLI on synthetic data: train -> evaluate -> inference,
single-task strategies, BraTS regions, outputs in the input's space. The contract every bundle keeps (resume after a
kill, bad input, bundle properties, metadata, TorchScript export, torchrun) is in test_bundle_contract.py."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle_cli import evaluate_bundle, log_of, run_bundle
from tests.bundle_specs import SPECS
from tests.bundle_specs import copy_cases as _copy_cases

BUNDLE = "glioma_seg_idh"
SMALL = SPECS[BUNDLE].small
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


@pytest.mark.slow
def test_train_saves_model_resume_state_and_logs_both_tasks(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    ckpts = list(models.glob("resume_*.pt"))
    assert [c.name for c in ckpts] == ["resume_checkpoint_epoch=2.pt"]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "weighting", "trainer"} <= set(state)
    assert float(state["weighting"]["scalarizer.log_var"].abs().sum()) > 0  # UW is the default and trains


@pytest.mark.slow
def test_evaluate_writes_issue_metrics(trained, data_dir):
    out = trained / "eval_out"
    metrics = evaluate_bundle(BUNDLE, trained, data_dir, out, **SMALL)
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
    log = log_of(proc)
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
