"""cmr_fundus end to end through the monai.bundle CLI on synthetic fundus photographs: train -> evaluate ->
inference, the sepl/independent/moe strategies, invalid values excluded on request, the factors in the metadata,
the data-set configs. The contract every bundle keeps (resume after a kill, bad input, bundle properties, metadata,
TorchScript export, torchrun) is in test_bundle_contract.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bundle_cli import bundle_configs, evaluate_bundle, log_of, run_bundle
from tests.bundle_specs import CMR_FACTORS, SPECS

BUNDLE = "cmr_fundus"
CFG = bundle_configs(BUNDLE)
SMALL = SPECS[BUNDLE].small
FACTORS = CMR_FACTORS


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
    metrics = evaluate_bundle(BUNDLE, trained, data_dir, out, **SMALL)
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
    log = log_of(run_bundle(BUNDLE, "train.json", over))
    assert f"epoch 1: training tasks {FACTORS.names}" in log
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)  # a state dict
    assert any(k.startswith("independent_heads.") for k in weights) == (strategy == "independent")
    assert any(k.startswith("gated_heads.") for k in weights) == (strategy == "moe")
    assert not any(".attention." in k for k in weights)  # neither baseline sees the priors
    if strategy == "moe":  # evaluate.json builds the same architecture from --strategy and loads the weights
        run_bundle(BUNDLE, ["train.json", "evaluate.json"], {**over, "output_dir": str(tmp_path / "eval")})
        assert "sbp_mae" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_clahe_option_is_recorded_and_checked_by_inference(data_dir, tmp_path):
    over = {"dataset_dir": str(data_dir), "bundle_root": str(tmp_path), "epochs": 1, "clahe_clip_limit": 0.02, **SMALL}
    run_bundle(BUNDLE, "train.json", over)
    settings = json.loads((tmp_path / "models" / "model_settings.json").read_text())
    assert settings["clahe_clip_limit"] == 0.02 and settings["image_size"] == SMALL.get("image_size", 128)
    infer = {k: v for k, v in over.items() if k not in ("epochs", "clahe_clip_limit")}
    proc = run_bundle(BUNDLE, "inference.json", {**infer, "output_dir": str(tmp_path / "pred")}, check=False)
    assert proc.returncode == 1
    assert "clahe_clip_limit: model 0.02, this run None" in proc.stderr.strip().splitlines()[-1]


def _damaged_copy(data_dir: Path, tmp_path: Path, damage: str) -> tuple[Path, list[str]]:
    """A copy of ``data_dir`` in ``tmp_path / "bad"`` damaged as the contract test's ``damage`` case."""
    bad = tmp_path / "bad"
    return bad, SPECS[BUNDLE].bad_inputs[damage](data_dir, bad)


@pytest.mark.slow
def test_bad_input_excluded_and_counted_when_the_config_says_so(data_dir, tmp_path):
    bad, _ = _damaged_copy(data_dir, tmp_path, "sbp412")
    over = {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), "epochs": 1, "on_invalid": "exclude", **SMALL}
    log = log_of(run_bundle(BUNDLE, "train.json", over))
    assert "sbp=412 is outside the plausible range [60, 260] mmHg; value excluded (missing)" in log
    assert "excluded {'sbp value': 1} (on_invalid='exclude')" in log
    assert (tmp_path / "b" / "models" / "model.pt").is_file()


def test_metadata_lists_every_default_factor_with_its_unit():
    """(The metadata's validity and its network outputs: test_bundle_contract.py.)"""
    meta = json.loads((CFG / "metadata.json").read_text())
    assert list(meta["network_data_format"]["outputs"]) == FACTORS.names
    for f in FACTORS:
        channel = meta["network_data_format"]["outputs"][f.name]["channel_def"]["0"]
        assert (f.unit in channel) and (("logit" in channel) == f.is_binary)


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
