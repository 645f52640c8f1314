"""Calibration metrics (ECE, Brier score, reliability diagrams), temperature and Platt fitting, the calibration file
and the calibrating inferer, on synthetic numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from common.calibration import (
    LogitCalibration,
    fit_platt,
    fit_temperature,
    negative_log_likelihood,
    read_calibration,
    write_calibration,
)
from common.data import FactorTable
from common.errors import SettingsError
from common.handlers import CalibrationFitter, MetricsJSONWriter
from common.inferers import CalibratedInferer
from common.metrics import BinaryTaskMetrics, FactorMetrics
from common.metrics.calibration import brier_score, expected_calibration_error, reliability_bins
from common.metrics.reliability_diagram import draw_reliability_diagram


def _sample(n: int = 20000, scale: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from the logits' own probabilities (perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, n)
    return z, (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(float)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_ece_and_brier_of_known_cases():
    z, y = _sample()
    assert expected_calibration_error(_sigmoid(z), y) < 0.02  # calibrated: ECE ~ 0 (sampling noise only)
    assert expected_calibration_error(_sigmoid(3 * z), y) > 0.08  # over-confident
    # by hand: bins [0.1, 0.2) holds 0.15 (label 0), [0.9, 1.0] holds 0.95, 0.95 (labels 1, 0)
    p, lab = np.array([0.15, 0.95, 0.95]), np.array([0, 1, 0])
    assert expected_calibration_error(p, lab) == pytest.approx((0.15 + 2 * abs(0.95 - 0.5)) / 3)
    assert brier_score(p, lab) == pytest.approx((0.15**2 + 0.05**2 + 0.95**2) / 3)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # p = 1 falls in the last bin
    mean_p, frac, counts = reliability_bins(p, lab)
    assert counts.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2] and frac[9] == pytest.approx(0.5)
    assert np.isnan(expected_calibration_error(np.zeros(0), np.zeros(0)))
    with pytest.raises(ValueError, match="same length"):
        brier_score(p, lab[:2])


def test_temperature_fit_recovers_overconfidence_and_lowers_nll_and_ece():
    z, y = _sample()
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    t = fit_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.05) and t > 1
    assert negative_log_likelihood(3 * z, y, temperature=t) < negative_log_likelihood(3 * z, y)
    assert expected_calibration_error(_sigmoid(3 * z / t), y) < expected_calibration_error(_sigmoid(3 * z), y) / 3
    assert fit_temperature(z / 2, y) < 1  # under-confident: sharpened
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (4000, 3))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=q) for q in prob])
    assert fit_temperature(4 * logits, labels, "softmax") == pytest.approx(4.0, rel=0.1)
    with pytest.raises(ValueError, match="activation"):
        fit_temperature(z, y, "tanh")


def test_platt_removes_a_logit_shift_that_temperature_cannot():
    """Calibrated logits shifted by log(4) (what BCE with pos_weight 4 does): dividing by T leaves a large ECE, Platt
    scaling finds b = -log(4) and calibrates."""
    z, y = _sample()
    shifted = z + math.log(4)
    ece_shifted = expected_calibration_error(_sigmoid(shifted), y)
    assert ece_shifted > 0.15
    t = fit_temperature(shifted, y)
    assert expected_calibration_error(_sigmoid(shifted / t), y) > 0.1  # T cannot remove a shift
    a, b = fit_platt(shifted, y)
    assert b == pytest.approx(-math.log(4), abs=0.1) and a == pytest.approx(1.0, abs=0.05)
    assert expected_calibration_error(_sigmoid(a * shifted + b), y) < 0.03
    nll = negative_log_likelihood(a * shifted + b, y)
    assert nll < negative_log_likelihood(shifted, y, temperature=t) < negative_log_likelihood(shifted, y)
    assert fit_platt(3 * z, y)[0] == pytest.approx(1 / 3, rel=0.05)  # over-confidence: the scale acts as 1 / T
    a, b = fit_platt(np.array([1.0, 2.0, 3.0]), np.ones(3))  # one class only: stays inside its bounds
    assert 0 < a <= 100 and -20 <= b <= 20
    # 8 separable samples: T runs to its bound, Platt's smoothed targets keep a and b moderate
    few_z, few_y = np.array([-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 0, 1, 1, 1, 1, 1.0])
    assert fit_temperature(few_z, few_y) == pytest.approx(0.05, rel=1e-3)
    a, b = fit_platt(few_z, few_y)
    assert 0.1 < a < 5 and abs(b) < 2
    with pytest.raises(ValueError, match="same number"):
        fit_platt(z, y[:-1])


def _calibration_file(tmp_path, outputs: dict) -> tuple[str, str]:
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    return write_calibration(str(tmp_path / "calibration.json"), outputs, str(model)), str(model)


def test_calibration_file_round_trip_and_clear_errors(tmp_path):
    path, model = _calibration_file(tmp_path, {"idh": {"temperature": 2.0, "n": 5}})  # a file without 'method'
    assert read_calibration(path, ["idh", "other"], model) == {"idh": LogitCalibration("temperature", temperature=2.0)}
    assert read_calibration(str(tmp_path / "absent.json"), ["idh"], model) == {}
    doc = json.loads(open(path).read())
    platt = {"method": "platt", "scale": 0.8, "bias": -1.25, "activation": "sigmoid", "n": 5}
    for change, key in (
        (lambda d: d["outputs"].update(idh=dict(platt, scale=0.0)), "outputs.idh.scale"),
        (lambda d: d["outputs"].update(idh=dict(platt, scale=-0.8)), "outputs.idh.scale"),
        (lambda d: d["outputs"].update(idh=dict(platt, bias=float("nan"))), "outputs.idh.bias"),
        (lambda d: d["outputs"].update(idh=dict(platt, bias=float("inf"))), "outputs.idh.bias"),
        (lambda d: d["outputs"].update(idh={k: v for k, v in platt.items() if k != "bias"}), "outputs.idh.bias"),
        (lambda d: d["outputs"].update(idh=dict(platt, method="vector")), "outputs.idh.method"),
        (lambda d: d["outputs"].update(idh=dict(platt, activation="softmax")), "outputs.idh.method"),
        (lambda d: d["outputs"].update(idj=d["outputs"].pop("idh")), "outputs.idj"),
        (lambda d: d["outputs"]["idh"].update(temperature=0.0), "outputs.idh.temperature"),
        (lambda d: d["outputs"]["idh"].update(temperature=-1.5), "outputs.idh.temperature"),
        (lambda d: d["outputs"]["idh"].update(temperature="2"), "outputs.idh.temperature"),
        (lambda d: d.update(model_sha256="0" * 64), "model_sha256"),
    ):
        bad = json.loads(json.dumps(doc))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SettingsError) as err:
            read_calibration(str(tmp_path / "bad.json"), ["idh"], model)
        assert str(tmp_path / "bad.json") in str(err.value) and f"'{key}'" in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SettingsError, match="bad.json cannot be read"):
        read_calibration(str(tmp_path / "bad.json"), ["idh"], model)
    with pytest.raises(ValueError, match="positive"):
        write_calibration(str(tmp_path / "c.json"), {"idh": {"temperature": 0}}, model)
    with pytest.raises(ValueError, match=r"\['idh'\]\['bias'\] must be a finite number"):
        write_calibration(str(tmp_path / "c.json"), {"idh": dict(platt, bias=float("nan"))}, model)
    # Platt next to a temperature: both read back as written
    path = write_calibration(str(tmp_path / "both.json"), {"idh": platt, "grade": {"temperature": 1.5}}, model)
    assert read_calibration(path, ["idh", "grade"], model) == {
        "idh": LogitCalibration("platt", scale=0.8, bias=-1.25), "grade": LogitCalibration(temperature=1.5)}
    with pytest.raises(ValueError, match="scale"):
        LogitCalibration("platt", scale=-1.0)


def test_inferer_scales_named_outputs_and_keeps_uncalibrated(tmp_path):
    path, model = _calibration_file(tmp_path, {"idh": {"temperature": 2.0}})
    logits = {"idh": torch.tensor([[4.0], [-2.0]]), "seg": torch.ones(2, 1, 3, 3)}

    def inner(inputs, network):
        return network(inputs)

    inferer = CalibratedInferer(inner, path, ["idh"], model, keep_uncalibrated=True)
    out = inferer(torch.zeros(2), lambda x: dict(logits))
    assert torch.equal(out["idh"], torch.tensor([[2.0], [-1.0]]))
    assert torch.equal(out["idh_uncalibrated"], logits["idh"])
    assert torch.equal(out["seg"], logits["seg"])
    no_file = CalibratedInferer(inner, str(tmp_path / "none.json"), ["idh"], model)
    plain = no_file(torch.zeros(2), lambda x: logits)
    assert plain is logits  # no file: untouched
    wrong = CalibratedInferer(inner, path, ["cls"], model)
    with pytest.raises(SettingsError, match="'outputs.idh' is not a classification output"):
        wrong(torch.zeros(2), lambda x: logits)
    # Platt: a * logit + b
    path = write_calibration(str(tmp_path / "platt.json"), {"idh": {"method": "platt", "scale": 0.5, "bias": -1.0}},
                             model)
    out = CalibratedInferer(inner, path, ["idh"], model)(torch.zeros(2), lambda x: dict(logits))
    assert torch.allclose(out["idh"], torch.tensor([[1.0], [-2.0]])) and "idh_uncalibrated" not in out


def _output(logits: np.ndarray, labels: np.ndarray, raw: np.ndarray | None = None) -> dict:
    pred = {"idh": torch.as_tensor(logits, dtype=torch.float32)}
    if raw is not None:
        pred["idh_uncalibrated"] = torch.as_tensor(raw, dtype=torch.float32)
    return {"pred": pred, "label": {"idh": torch.as_tensor(labels), "case": [f"c{i}" for i in range(len(labels))]}}


def test_binary_metrics_report_calibration_and_draw_diagram(tmp_path):
    z, y = _sample(4000)
    metric = BinaryTaskMetrics("idh", label_key="idh", n_bootstrap=0, reliability_dir=str(tmp_path))
    metric.update(_output(z, y))
    out = metric.compute()
    assert out["idh_ece"] < 0.05 and out["idh_brier"] == pytest.approx(brier_score(_sigmoid(z), y), abs=1e-6)
    assert "idh_ece_uncalibrated" not in out
    assert Image.open(tmp_path / "idh_reliability.png").size == (480, 480)
    metric.reset()
    metric.update(_output(z, y, raw=3 * z))
    out = metric.compute()
    assert out["idh_ece_uncalibrated"] > out["idh_ece"] + 0.05
    assert out["idh_brier_uncalibrated"] > out["idh_brier"]


def test_factor_metrics_report_calibration_of_binary_factors(tmp_path):
    z, y = _sample(400)
    table = [{"name": "sex", "kind": "binary"}, {"name": "age", "kind": "regression", "unit": "a", "scale": 10}]
    factors = FactorTable(table)
    metric = FactorMetrics(factors, n_bootstrap=0, reliability_dir=str(tmp_path))
    age = np.linspace(20, 80, len(y))
    metric.update({
        "pred": {"sex": torch.as_tensor(z[:, None]), "age": torch.as_tensor(age[:, None]),
                 "sex_uncalibrated": torch.as_tensor(3 * z[:, None])},
        "label": {"factors": torch.as_tensor(np.stack([y, age], 1)), "case": [str(i) for i in range(len(y))]},
    })
    out = metric.compute()
    assert {"sex_ece", "sex_brier", "sex_ece_uncalibrated", "sex_brier_uncalibrated"} <= set(out)
    assert not any(k.startswith("age_") and ("ece" in k or "brier" in k) for k in out)
    assert (tmp_path / "sex_reliability.png").is_file() and not (tmp_path / "age_reliability.png").exists()


def test_temperature_fitter_writes_file_and_logs(tmp_path, caplog):
    z, y = _sample(2000)
    model = tmp_path / "model.pt"
    model.write_bytes(b"w")
    y[:10] = -1  # unknown labels are skipped
    batches = [_output(3 * z[i : i + 500], y[i : i + 500]) for i in range(0, 2000, 500)]
    engine = Engine(lambda e, b: b)
    fitter = CalibrationFitter([{"name": "idh", "label_key": "idh"}], str(tmp_path / "calibration.json"), str(model))
    fitter.attach(engine)
    with caplog.at_level("INFO"):
        engine.run(batches)
    doc = json.loads((tmp_path / "calibration.json").read_text())
    entry = doc["outputs"]["idh"]
    assert entry["temperature"] == pytest.approx(3.0, rel=0.1) and entry["n"] == 1990
    assert entry["nll_after"] < entry["nll_before"] and entry["ece_after"] < entry["ece_before"]
    assert entry["method"] == "temperature"
    assert "calibration of 'idh' on 1990 samples: temperature" in caplog.text
    # one class only: the fit runs to the end of the range, and says so
    engine = Engine(lambda e, b: b)
    one_class = CalibrationFitter([{"name": "idh", "label_key": "idh"}], str(tmp_path / "one.json"), str(model))
    one_class.attach(engine)
    with caplog.at_level("WARNING"):
        engine.run([_output(np.array([0.5, 1.0]), np.array([1.0, 1.0]))])
    assert "one class only" in caplog.text and "at the end of the search range" in caplog.text
    with pytest.raises(ValueError, match="label_key"):
        CalibrationFitter([{"name": "idh"}], "c.json", "m.pt")


def test_platt_fitter_writes_scale_and_bias_and_refuses_softmax(tmp_path, caplog):
    z, y = _sample(4000)
    model = tmp_path / "model.pt"
    model.write_bytes(b"w")
    engine = Engine(lambda e, b: b)
    path = tmp_path / "calibration.json"
    fitter = CalibrationFitter([{"name": "idh", "label_key": "idh"}], str(path), str(model), method="platt")
    fitter.attach(engine)
    with caplog.at_level("INFO"):
        engine.run([_output(z[i : i + 1000] + math.log(4), y[i : i + 1000]) for i in range(0, 4000, 1000)])
    entry = json.loads(path.read_text())["outputs"]["idh"]
    assert entry["method"] == "platt" and "temperature" not in entry
    assert entry["bias"] == pytest.approx(-math.log(4), abs=0.2) and entry["scale"] > 0
    assert entry["nll_after"] < entry["nll_before"] and entry["ece_after"] < 0.05 < entry["ece_before"]
    assert "calibration of 'idh' on 4000 samples: platt scale" in caplog.text
    assert read_calibration(str(path), ["idh"], str(model))["idh"].method == "platt"
    softmax = [{"name": "grade", "label_key": "grade", "activation": "softmax"}]
    with pytest.raises(SettingsError, match="'platt' fits binary .* output 'grade' is softmax"):
        CalibrationFitter(softmax, "c.json", "m.pt", method="platt")
    with pytest.raises(SettingsError, match="calibration_method must be one of"):
        CalibrationFitter([{"name": "idh", "label_key": "idh"}], "c.json", "m.pt", method="vector")


def test_metrics_json_optional_keys(tmp_path):
    engine = Engine(lambda e, b: b)
    engine.state.metrics = {"a": 1.0, "b_uncalibrated": 2.0}
    MetricsJSONWriter(str(tmp_path), keys=["a"], optional_keys=["b_uncalibrated", "c_uncalibrated"])(engine)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1.0, "b_uncalibrated": 2.0}


def test_reliability_diagram_refuses_no_curves(tmp_path):
    with pytest.raises(ValueError, match="curves"):
        draw_reliability_diagram(str(tmp_path / "r.png"), {})
