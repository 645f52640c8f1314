"""fundus_glaucoma end to end through the monai.bundle CLI on synthetic photographs: train (locator, then the
multi-task crop model) -> evaluate -> inference, strategies (joint, cooperative, single-task), a flagged image without
a disc. The contract every bundle keeps (resume after a kill, bad input, bundle properties, metadata, TorchScript
export, torchrun) is in test_bundle_contract.py."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import build_fundus_datalist, select_split
from tests.bundle_cli import log_of, run_bundle
from tests.bundle_specs import SPECS

BUNDLE = "fundus_glaucoma"
SMALL = SPECS[BUNDLE].small
METRIC_KEYS = {
    "disc_dice",
    "cup_dice",
    "vcdr_mae",
    "glaucoma_auc",
    "glaucoma_auc_ci_low",
    "glaucoma_auc_ci_high",
    "n_images",
}


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
    records = build_fundus_datalist(data_dir, label_column="glaucoma")
    n_test = len(select_split(records, "test", 0.15, 0.2, 0, split_key="split"))
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
    assert "image 'blank'" in log_of(proc)


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
    log = log_of(proc)
    assert f"epoch 1: training tasks {active}" in log
    assert f"engine.{trainer} - INFO - Epoch[1] Complete" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    signature = json.loads((tmp_path / "models" / "resume_signature.json").read_text())
    assert signature["strategy"] == strategy
    # the fused glaucoma score of a single-task model uses only what it was trained for
    sources = json.loads((tmp_path / "models" / "glaucoma_score.json").read_text())["sources"]
    assert sources == {"stl_seg": ["vcdr"], "stl_cls": ["head"], "cool": ["head", "vcdr"]}[strategy]
    assert (signature["cooperative"] is not None) == (strategy == "cool")
