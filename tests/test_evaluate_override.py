"""Every bundle's evaluate.json is a short override merged after train.json, as Project-MONAI model-zoo bundles do
(``--config_file "['configs/train.json','configs/evaluate.json']"``): it repeats no train.json item, builds no network
of its own, and replaces the workflow, so the merged config runs the evaluator on ``models/model.pt`` and never
trains."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from common.calibration import METHODS
from tests.bundle_cli import REPO, bundle_configs

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "evaluate.json").is_file())


def _load(bundle: str, name: str) -> dict:
    return json.loads((bundle_configs(bundle) / name).read_text())


def test_every_bundle_is_checked():
    assert BUNDLES == ["brats_mtl", "cmr_fundus", "fundus_glaucoma", "glioma_seg_idh"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_json_repeats_no_train_json_item(bundle):
    train, evaluate = _load(bundle, "train.json"), _load(bundle, "evaluate.json")
    repeated = sorted(k for k in evaluate if k in train and evaluate[k] == train[k])
    assert not repeated, f"evaluate.json repeats train.json's {repeated}: leave them to the merge"
    built_here = sorted({"imports", "network_def", "network", "locator_def", "datalist", "factors"} & set(evaluate))
    assert not built_here, f"evaluate.json redefines {built_here}; the evaluated model is train.json's"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_merged_evaluate_runs_the_evaluator_only(bundle):
    cfg = bundle_configs(bundle)
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "evaluate.json")])
    assert parser["run"] == ["$@evaluator.run()"]
    assert not any("trainer" in str(x) or "makedirs" in str(x) or "write_text" in str(x) for x in parser["initialize"])
    assert not any("trainer" in str(x) for x in parser["finalize"])
    evaluator = parser["evaluator"]
    assert evaluator["_target_"] == "SupervisedEvaluator" and evaluator["val_handlers"] == "@handlers"
    targets = [h["_target_"] for h in parser["handlers"]]
    loaders = ("CheckpointLoader", "common.handlers.CheckedCheckpointLoader")  # checked: model.pt's settings
    loads = [h["load_path"] for h in parser["handlers"] if h["_target_"] in loaders]
    assert any("'model.pt'" in p for p in loads) and "common.handlers.MetricsJSONWriter" in targets
    assert "ValidationHandler" not in json.dumps(parser["handlers"])  # the training-time evaluator is not reused


@pytest.mark.parametrize("bundle", BUNDLES)
def test_merged_calibrate_fits_temperatures_only(bundle):
    """calibrate.json is an override like evaluate.json: merged after train.json it runs the trained model on the
    validation split and fits the calibration (the bundle's ``calibration_method``), never trains."""
    train, calibrate = _load(bundle, "train.json"), _load(bundle, "calibrate.json")
    assert not sorted(k for k in calibrate if k in train and calibrate[k] == train[k])
    assert not {"imports", "network_def", "network", "locator_def", "datalist", "factors"} & set(calibrate)
    cfg = bundle_configs(bundle)
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "calibrate.json")])
    assert parser["run"] == ["$@calibrator.run()"]
    assert not any("trainer" in str(x) for x in parser["initialize"] + parser["finalize"])
    assert parser["calibrator"]["val_data_loader"] == "@validate#dataloader"  # the split training selected on
    targets = [h["_target_"] for h in parser["handlers"]]
    assert "common.handlers.CheckedCheckpointLoader" in targets and "common.handlers.CalibrationFitter" in targets
    fitter = next(h for h in parser["handlers"] if h["_target_"] == "common.handlers.CalibrationFitter")
    assert fitter["method"] == "@calibration_method" and calibrate["calibration_method"] in METHODS
    # evaluate.json and inference.json scale the same outputs calibrate.json fits
    for name in ("evaluate.json", "inference.json"):
        other = _load(bundle, name)
        assert other["calibration_file"] == calibrate["calibration_file"]
        assert other["evaluator"]["inferer"] == "@calibrated_inferer"
        if isinstance(other["classification_outputs"], list):
            assert other["classification_outputs"] == [o["name"] for o in calibrate["calibration_outputs"]]
