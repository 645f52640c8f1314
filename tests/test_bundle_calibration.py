"""Every bundle's calibration: calibrate.json fits one calibration per classification output on the validation
split (the bundle's ``calibration_method``: temperature or Platt scaling), evaluate.json reports the ECE and Brier score
of each (calibrated and not) with a reliability diagram, and inference.json applies the fitted calibration."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from monai.bundle import ConfigParser

from common.calibration import LogitCalibration, write_calibration
from tests.bundle_cli import bundle_configs, bundle_names, evaluate_bundle, log_of, run_bundle
from tests.bundle_specs import CMR_FACTORS, spec_of

# classification output -> its metric prefix in metrics.json (the binary factors of cmr_fundus: their own names)
PREFIXES: dict[str, dict[str, str]] = {
    "brats_mtl": {"cls": "cls"},
    "glioma_seg_idh": {"idh": "idh"},
    "fundus_glaucoma": {"glaucoma": "glaucoma_head", "glaucoma_fused": "glaucoma", "glaucoma_vcdr": "glaucoma_vcdr"},
    "cmr_fundus": {f.name: f.name for f in CMR_FACTORS if f.is_binary},
}
# classification output -> its probability column in inference's predictions.csv
COLUMNS: dict[str, dict[str, str]] = {
    "brats_mtl": {"cls": "probability"},
    "glioma_seg_idh": {"idh": "idh_probability"},
    "fundus_glaucoma": {"glaucoma_fused": "glaucoma_probability", "glaucoma": "glaucoma_probability_head",
                        "glaucoma_vcdr": "glaucoma_probability_vcdr"},
    "cmr_fundus": {f.name: f"{f.name}_probability" for f in CMR_FACTORS if f.is_binary},
}
# the inference input inside the bundle's synthetic data set (cmr_fundus reads the photographs of one folder)
INFERENCE_INPUT = {"cmr_fundus": "images"}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _is_identity(c: LogitCalibration, tol: float) -> bool:
    scale = 1 / c.temperature if c.method == "temperature" else c.scale
    return abs(scale - 1) < tol and abs(c.bias) < tol


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_names())
def test_calibrate_evaluate_and_inference_use_calibration(bundle, trained_bundle, bundle_data, tmp_path):
    spec = spec_of(bundle)
    root = tmp_path / "root"
    shutil.copytree(trained_bundle(bundle) / "models", root / "models")  # the shared model's folder stays as it is
    settings = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(root), **spec.small}
    log = log_of(run_bundle(bundle, ["train.json", "calibrate.json"], settings))
    fitted = json.loads((root / "models" / "calibration.json").read_text())["outputs"]
    method = json.loads((bundle_configs(bundle) / "calibrate.json").read_text())["calibration_method"]
    prefixes = PREFIXES[bundle]
    assert set(fitted) == set(prefixes), fitted
    calibrations = {name: LogitCalibration.from_entry(entry) for name, entry in fitted.items()}
    for name, entry in fitted.items():
        assert entry["method"] == method and entry["n"] > 0
        if method == "temperature":  # T = 1 is among the candidates of the fit (Platt fits smoothed targets)
            assert entry["nll_after"] <= entry["nll_before"] + 1e-9
        assert math.isfinite(entry["nll_after"]) and 0 <= entry["ece_after"] <= 1
        assert f"calibration of '{name}' on {entry['n']} samples: {method}" in log

    out = tmp_path / "eval"
    metrics = evaluate_bundle(bundle, root, bundle_data(bundle), out, **spec.small)
    for name, prefix in prefixes.items():
        keys = [f"{prefix}_{m}{s}" for m in ("ece", "brier") for s in ("", "_uncalibrated")]
        assert set(keys) <= set(metrics), sorted(metrics)
        assert (out / f"{prefix}_reliability.png").is_file()

    # inference.json: the evaluator's inferer applies each output's calibration to its logits
    parser = ConfigParser()
    parser.read_config(str(bundle_configs(bundle) / "inference.json"))
    parser.update({"bundle_root": str(root), "dataset_dir": str(bundle_data(bundle)), **spec.small})
    assert parser.get("evaluator#inferer") == "@calibrated_inferer"
    parser.get_parsed_content("imports")
    inferer = parser.get_parsed_content("calibrated_inferer")
    logits = {name: torch.tensor([[2.0], [-1.0]]) for name in fitted}
    inferer.inferer = lambda inputs, network: network(inputs)  # the network's logits as they are
    scaled = inferer(torch.zeros(2), lambda x: dict(logits))
    for name, calibration in calibrations.items():
        probs, raw = torch.sigmoid(scaled[name]), torch.sigmoid(logits[name])
        expected = logits[name] / calibration.temperature if method == "temperature" else (
            logits[name] * calibration.scale + calibration.bias)
        assert torch.allclose(scaled[name], expected)
        assert _is_identity(calibration, 1e-3) or not torch.allclose(probs, raw)

    # ... and a real inference run's probabilities are the uncalibrated ones (same model without the file) calibrated
    plain = tmp_path / "plain"
    shutil.copytree(root / "models", plain / "models", ignore=shutil.ignore_patterns("calibration.json"))
    images = bundle_data(bundle) / INFERENCE_INPUT.get(bundle, "")
    rows = {}
    for name, bundle_root in (("calibrated", root), ("plain", plain)):
        out = tmp_path / f"pred_{name}"
        settings = {"dataset_dir": str(images), "bundle_root": str(bundle_root), "output_dir": str(out), **spec.small}
        run_bundle(bundle, "inference.json", settings)
        rows[name] = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows["calibrated"]) == len(rows["plain"]) > 0
    changed = 0
    for output, column in COLUMNS[bundle].items():
        calibration = calibrations[output]
        for cal, raw in zip(rows["calibrated"], rows["plain"]):
            if not raw[column] or not 0.01 < float(raw[column]) < 0.99:
                continue  # no prediction (blank image), or too close to 0/1 for the CSV's rounding
            p = float(raw[column])
            expected = float(torch.sigmoid(calibration(torch.tensor(_logit(p), dtype=torch.float64))))
            # the CSV's rounding of p, carried through the calibration (its slope in probability)
            slope = float(calibration(torch.tensor(1.0, dtype=torch.float64)) - calibration(torch.tensor(0.0)))
            tol = 2e-3 * max(1.0, slope * expected * (1 - expected) / (p * (1 - p)))
            assert float(cal[column]) == pytest.approx(expected, abs=tol), (output, cal, raw)
            changed += abs(float(cal[column]) - p) > 1e-4
    assert changed or all(_is_identity(c, 1e-2) for c in calibrations.values())


@pytest.mark.slow
def test_calibration_file_with_unknown_output_stops_evaluation(trained_bundle, bundle_data, tmp_path):
    bundle = "glioma_seg_idh"
    root = tmp_path / "root"
    shutil.copytree(trained_bundle(bundle) / "models", root / "models")
    model = root / "models" / "model.pt"
    write_calibration(str(root / "models" / "calibration.json"), {"idh_grade": {"temperature": 1.5}}, str(model))
    settings = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(root), "output_dir": str(tmp_path / "e")}
    proc = run_bundle(bundle, ["train.json", "evaluate.json"], {**settings, **spec_of(bundle).small}, check=False)
    last = log_of(proc).strip().splitlines()[-1]
    assert proc.returncode == 1
    assert last.startswith("SettingsError:") and "calibration.json" in last and "'outputs.idh_grade'" in last, last
