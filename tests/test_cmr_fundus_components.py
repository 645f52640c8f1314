"""cmr_fundus building blocks: factor table and datalist (missing values, bad input), patient-level split, masked
per-factor loss, SePL network (three architectures, TorchScript), per-factor metrics in original units."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import (
    DatasetError,
    FactorTable,
    factor_pos_weights,
    generate_cmr_fundus_like,
    list_fundus_images,
    read_factor_datalist,
    select_split,
)
from common.losses import MaskedFactorLoss
from common.metrics import FactorMetrics, roc_auc
from common.networks import SePLNet
from tests.bundle_cli import bundle_configs

CFG = bundle_configs("cmr_fundus")
SEPL15 = ["sex", "age", "height", "weight", "bmi", "waist", "sbp", "dbp", "total_cholesterol", "glucose",
          "triglycerides", "hba1c", "bun", "creatinine", "uric_acid"]  # fmt: skip
SMALL_NET = {"encoder_channels": [8, 8, 16, 16], "expert_dim": 8, "hidden_dim": 8}


def _config_factors(name: str = "factors.json") -> list[dict]:
    return json.loads((CFG / name).read_text())["factors"]


def _table() -> list[dict]:
    return [
        {
            "name": "age",
            "kind": "regression",
            "stage": "prior",
            "unit": "years",
            "center": 55,
            "scale": 10,
            "range": [0, 120],
        },
        {"name": "sex", "kind": "binary", "stage": "prior", "values": {"female": 0, "male": 1}},
        {
            "name": "sbp",
            "kind": "regression",
            "unit": "mmHg",
            "center": 125,
            "scale": 15,
            "range": [60, 260],
            "column": "SBP",
        },
        {"name": "diabetes", "kind": "binary", "column": "D", "pos_weight": "balanced"},
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def small_set(tmp_path) -> Path:
    """4 images of 3 patients with a CSV using the table of :func:`_table`; images are real PNGs."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    rows = [
        {"image": "a_l.png", "patient": "a", "age": "60", "sex": "male", "SBP": "130", "D": "1", "eye": "left"},
        {"image": "a_r.png", "patient": "a", "age": "60", "sex": "male", "SBP": "", "D": "1", "eye": "right"},
        {"image": "b_l.png", "patient": "b", "age": "NA", "sex": "Female", "SBP": "118", "D": "0", "eye": "left"},
        {"image": "c_l.png", "patient": "c", "age": "41", "sex": "", "SBP": "150", "D": "0", "eye": "left"},
    ]
    for r in rows:
        Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(tmp_path / "images" / r["image"])
    _write_csv(tmp_path / "factors.csv", rows)
    return tmp_path


# --------------------------------------------------------------------------------------------- factor table
def test_default_table_is_sepl15_and_the_data_tables_parse():
    table = FactorTable(_config_factors())
    assert table.names == SEPL15
    assert [f.name for f in table.priors] == ["sex", "age", "height", "weight", "bmi", "waist"]
    assert table["sex"].is_binary and table["sbp"].unit == "mmHg" and table["sbp"].loss == "l1"
    for cfg in ("train.json", "inference.json"):  # both read configs/factors.json (evaluate.json is merged over train)
        parser = ConfigParser()
        parser.read_config(str(CFG / cfg))
        assert parser.get_parsed_content("factors") == _config_factors(), f"{cfg} has another default factor table"
    odir = FactorTable(_config_factors("odir5k.json"))
    assert [(f.name, f.kind, f.stage) for f in odir] == [
        ("age", "regression", "prior"), ("sex", "binary", "prior"),
        ("diabetes", "binary", "complex"), ("hypertension", "binary", "complex"),
    ]  # fmt: skip
    assert [f.name for f in FactorTable(_config_factors("les_av.json")).complex] == ["sbp", "dbp"]


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"name": "x", "kind": "ordinal"}, r"factors\[0\] \('x'\)\['kind'\] must be one of"),
        ({"name": "x", "kind": "binary", "loss": "l1"}, r"\['loss'\] must be one of \['bce'\]"),
        ({"name": "x", "kind": "regression", "scale": 0}, r"\['scale'\] must be a finite number > 0"),
        ({"name": "x", "kind": "regression", "range": [5, 1]}, r"\['range'\] must be \[low, high\]"),
        ({"name": "x", "kind": "regression", "stage": "first"}, r"\['stage'\] must be one of"),
        ({"name": "x-y", "kind": "binary"}, r"factors\[0\]\['name'\] must be an identifier"),
        ({"name": "x", "kind": "binary", "typo": 1}, r"unknown keys \['typo'\]"),
        ({"name": "x", "kind": "binary", "values": {"yes": 2}}, r"\['values'\] must map text to 0 or 1"),
    ],
)
def test_factor_table_errors_name_the_entry_and_key(entry, match):
    with pytest.raises(ValueError, match=match):
        FactorTable([entry])


def test_factor_table_rejects_empty_and_repeated():
    with pytest.raises(ValueError, match="empty"):
        FactorTable([])
    with pytest.raises(ValueError, match=r"repeated names \['age'\]"):
        FactorTable([{"name": "age", "kind": "regression"}, {"name": "age", "kind": "regression", "column": "x"}])


# ----------------------------------------------------------------------------------------------- datalist
def test_datalist_reads_values_in_original_units_with_missing_as_nan(small_set):
    records = read_factor_datalist(small_set, _table(), ignore_columns=["eye"])
    assert [r["image_id"] for r in records] == ["a_l", "a_r", "b_l", "c_l"]
    assert [r["case"] for r in records] == ["a", "a", "b", "c"]
    values = np.stack([r["factors"] for r in records])
    expected = np.array([[60, 1, 130, 1], [60, 1, np.nan, 1], [np.nan, 0, 118, 0], [41, np.nan, 150, 0]])
    np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))
    np.testing.assert_allclose(values[~np.isnan(values)], expected[~np.isnan(expected)])
    # balanced pos_weight counts images with a known value: 2 negatives / 2 positives
    assert factor_pos_weights(records, _table()) == {"diabetes": 1.0}


def test_datalist_from_json(small_set):
    rows = list(csv.DictReader(open(small_set / "factors.csv")))
    for r in rows:
        r.pop("eye")
    rows[0]["age"] = 61.5  # numbers as JSON numbers
    (small_set / "factors.json").write_text(json.dumps(rows))
    records = read_factor_datalist(small_set, _table(), labels_file=small_set / "factors.json")
    assert records[0]["factors"][0] == pytest.approx(61.5) and len(records) == 4


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("SBP", "412", "SBP=412 is outside the plausible range [60, 260] mmHg"),
        ("age", "sixty", "age='sixty' is not a number"),
        ("sex", "x", "sex='x' is not one of ['female', 'male'] (binary factor)"),
    ],
)
def test_bad_value_is_one_error_naming_file_and_row_or_a_counted_exclusion(small_set, column, value, message, caplog):
    rows = list(csv.DictReader(open(small_set / "factors.csv")))
    rows[2][column] = value
    _write_csv(small_set / "factors.csv", rows)
    with pytest.raises(DatasetError) as err:
        read_factor_datalist(small_set, _table(), ignore_columns=["eye"])
    assert str(small_set / "factors.csv") in str(err.value) and "row 4" in str(err.value)
    assert message in str(err.value) and "case 'b_l'" in str(err.value)
    records = read_factor_datalist(small_set, _table(), ignore_columns=["eye"], on_invalid="exclude")
    assert len(records) == 4  # the image stays; only the bad value is dropped
    factor = {"SBP": "sbp", "age": "age", "sex": "sex"}[column]
    assert np.isnan(records[2]["factors"][FactorTable(_table()).index(factor)])
    assert f"excluded {{'{factor} value': 1}}" in caplog.text


def test_missing_image_and_unknown_factor_column(small_set, caplog):
    (small_set / "images" / "b_l.png").unlink()
    with pytest.raises(DatasetError, match=r"row 4: image .*b_l.png is listed but does not exist"):
        read_factor_datalist(small_set, _table(), ignore_columns=["eye"])
    records = read_factor_datalist(small_set, _table(), ignore_columns=["eye"], on_invalid="exclude")
    assert [r["image_id"] for r in records] == ["a_l", "a_r", "c_l"]
    assert "excluded {'missing image': 1}" in caplog.text
    with pytest.raises(DatasetError, match=r"columns \['eye'\] are not factors of the table"):
        read_factor_datalist(small_set, _table())
    with pytest.raises(DatasetError, match=r"has no column for factors \['D'\]"):
        rows = list(csv.DictReader(open(small_set / "factors.csv")))
        _write_csv(small_set / "factors.csv", [{k: v for k, v in r.items() if k != "D"} for r in rows])
        read_factor_datalist(small_set, _table(), ignore_columns=["eye"])


def test_list_fundus_images(small_set):
    assert [r["image_id"] for r in list_fundus_images(small_set / "images")] == ["a_l", "a_r", "b_l", "c_l"]
    assert len(list_fundus_images(small_set)) == 4  # the training layout's images/ folder
    (small_set / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image"):
        list_fundus_images(small_set / "empty")
    with pytest.raises(DatasetError, match="is not a folder of images"):
        list_fundus_images(small_set / "absent")


def test_split_keeps_both_eyes_of_a_patient_together(tmp_path):
    generate_cmr_fundus_like(tmp_path, n_patients=20, size=64, seed=1)
    table = _config_factors()
    records = read_factor_datalist(tmp_path, table, ignore_columns=["eye"])
    parts = {s: select_split(records, s, 0.2, 0.2, seed=0) for s in ("train", "validation", "test")}
    patients = {s: {r["case"] for r in p} for s, p in parts.items()}
    assert sum(len(p) for p in parts.values()) == 40
    assert not (patients["train"] & patients["validation"]) and not (patients["train"] & patients["test"])
    for part in parts.values():
        assert all(sum(r["case"] == c for r in part) == 2 for c in {r["case"] for r in part})


# ---------------------------------------------------------------------------------------------------- loss
def test_masked_loss_uses_known_values_only_on_the_table_scale():
    table = _table()
    loss = MaskedFactorLoss(table, pos_weight={"diabetes": 3.0})
    preds = {
        "age": torch.tensor([[65.0], [0.0], [50.0]], requires_grad=True),
        "sex": torch.tensor([[2.0], [-1.0], [0.0]]),
        "sbp": torch.tensor([[125.0], [140.0], [110.0]]),
        "diabetes": torch.tensor([[0.5], [0.0], [-0.5]]),
    }
    nan = float("nan")
    target = torch.tensor([[60.0, 1, nan, 1], [nan, 0, nan, 0], [40.0, nan, nan, 1]])
    out = loss(preds, {"factors": target})
    assert set(out) == {"age", "sex", "diabetes"}  # sbp has no known value in the batch: no loss, no NaN
    assert float(out["age"].detach()) == pytest.approx((0.5 + 1.0) / 2)  # |65-60|/10 and |50-40|/10; sample 2 masked
    expected_sex = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    )
    assert float(out["sex"]) == pytest.approx(float(expected_sex))
    expected_d = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.5, 0.0, -0.5]), torch.tensor([1.0, 0.0, 1.0]), pos_weight=torch.tensor(3.0)
    )
    assert float(out["diabetes"]) == pytest.approx(float(expected_d))
    out["age"].backward()
    assert preds["age"].grad[1].item() == 0.0 and preds["age"].grad[0].item() != 0.0
    assert set(loss(preds, {"factors": target}, tasks=["sex"])) == {"sex"}
    with pytest.raises(ValueError, match=r"must be \(batch, 4\)"):
        loss(preds, {"factors": target[:, :3]})
    with pytest.raises(ValueError, match="pos_weight names factors"):
        MaskedFactorLoss(table, pos_weight={"ldl": 1.0})


# ------------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("architecture", ["sepl", "independent", "moe"])
def test_network_outputs_every_factor_and_scripts(architecture):
    table = _config_factors()
    net = SePLNet(table, architecture, **SMALL_NET).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        scripted = torch.jit.script(net)(x)
    assert list(out) == ["sex", "age", "height", "weight", "bmi", "waist", *SEPL15[6:]]
    assert all(v.shape == (2, 1) for v in out.values())
    assert all(torch.allclose(out[k], scripted[k], atol=1e-5) for k in out)
    keys = set(net.state_dict())
    assert any(k.startswith("independent_heads.") for k in keys) == (architecture == "independent")
    assert any(k.startswith("experts.") for k in keys) == (architecture != "independent")
    assert any(".attention." in k for k in keys) == (architecture == "sepl")


def test_sepl_propagates_priors_to_complex_factors():
    """Changing only the prior heads changes the complex outputs in SePL, never in the MoE baseline."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for architecture, changes in (("sepl", True), ("moe", False)):
        net = SePLNet(_table(), architecture, **SMALL_NET).eval()
        with torch.no_grad():
            before = net(x)
            for p in net.prior_heads.parameters():
                p.add_(torch.randn_like(p))
            after = net(x)
        assert not torch.allclose(before["age"], after["age"])
        assert (not torch.allclose(before["sbp"], after["sbp"])) == changes, architecture


def test_untrained_regression_output_starts_at_the_table_centre():
    net = SePLNet([{"name": "sbp", "kind": "regression", "center": 125, "scale": 15}], "independent", **SMALL_NET)
    for p in net.independent_heads["sbp"].net[-1].parameters():
        torch.nn.init.zeros_(p)
    assert torch.allclose(net.eval()(torch.randn(2, 3, 32, 32))["sbp"], torch.full((2, 1), 125.0))
    with pytest.raises(ValueError, match="architecture must be one of"):
        SePLNet(_table(), "mmoe")


def test_config_network_matches_metadata_outputs():
    parser = ConfigParser()
    parser.read_config(str(CFG / "inference.json"))
    net = parser.get_parsed_content("network_def").eval()
    meta = json.loads((CFG / "metadata.json").read_text())["network_data_format"]
    shape = meta["inputs"]["image"]["spatial_shape"]
    assert shape == [parser["image_size"]] * 2
    with torch.no_grad():
        out = net(torch.randn(1, 3, *shape))
    assert list(out) == list(meta["outputs"])
    assert all(out[k].shape[1] == meta["outputs"][k]["num_channels"] for k in out)


# ------------------------------------------------------------------------------------------------- metrics
def _run_metric(metric: FactorMetrics, preds: dict, values: torch.Tensor, cases: list[str]) -> dict:
    metric.reset()
    half = len(cases) // 2
    for sl in (slice(0, half), slice(half, None)):
        metric.update(
            {"pred": {k: v[sl] for k, v in preds.items()}, "label": {"factors": values[sl], "case": cases[sl]}}
        )
    return metric.compute()


def test_metrics_in_original_units_and_auc_on_probabilities():
    rng = np.random.default_rng(0)
    n = 40
    age_true = rng.uniform(30, 80, n)
    age_pred = age_true + rng.normal(0, 5, n)
    d_true = (rng.random(n) < 0.4).astype(float)
    d_logit = 1.5 * (d_true - 0.5) + rng.normal(0, 1.2, n)
    age_true[3] = np.nan  # missing values are skipped per factor
    d_true[[5, 6]] = np.nan
    values = torch.tensor(np.stack([age_true, np.zeros(n), np.full(n, np.nan), d_true], 1), dtype=torch.float32)
    preds = {
        "age": torch.tensor(age_pred, dtype=torch.float32)[:, None],
        "sex": torch.zeros(n, 1),
        "sbp": torch.full((n, 1), 120.0),
        "diabetes": torch.tensor(d_logit, dtype=torch.float32)[:, None],
    }
    cases = [f"p{i // 2}" for i in range(n)]  # two images per patient
    out = _run_metric(FactorMetrics(_table(), n_bootstrap=200, prefix="val_"), preds, values, cases)
    known = ~np.isnan(age_true)
    assert out["val_age_mae"] == pytest.approx(np.mean(np.abs(age_pred - age_true)[known]), rel=1e-5)
    assert out["val_age_rmse"] == pytest.approx(np.sqrt(np.mean(((age_pred - age_true) ** 2)[known])), rel=1e-5)
    assert out["val_age_n"] == n - 1 and out["val_diabetes_n"] == n - 2 and out["val_sbp_n"] == 0
    assert math.isnan(out["val_sbp_mae"])  # no known value: undefined, not 0
    kd = ~np.isnan(d_true)
    probs = 1 / (1 + np.exp(-d_logit[kd]))
    assert out["val_diabetes_auc"] == pytest.approx(roc_auc(probs, d_true[kd]))
    thresholded = roc_auc((probs >= 0.5).astype(float), d_true[kd])
    assert out["val_diabetes_auc"] != pytest.approx(thresholded)  # AUC ranks probabilities, not 0/1 predictions
    assert out["val_diabetes_accuracy"] == pytest.approx(np.mean((probs >= 0.5) == (d_true[kd] > 0.5)))
    assert out["val_diabetes_auc_ci_low"] <= out["val_diabetes_auc"] <= out["val_diabetes_auc_ci_high"]
    assert out["val_age_mae_ci_low"] <= out["val_age_mae"] <= out["val_age_mae_ci_high"]
    assert out["val_n_images"] == n and out["val_n_patients"] == n // 2
    assert math.isnan(out["val_sex_auc"])  # one class only
    expected_score = np.mean([1 - out["val_age_mae"] / 10, out["val_diabetes_auc"]])
    assert out["val_score"] == pytest.approx(expected_score)


def test_factor_table_subset_for_single_task_baselines():
    table = FactorTable(
        [
            {"name": "age", "kind": "regression", "loss": "l1", "center": 57, "scale": 12, "stage": "prior"},
            {"name": "sex", "kind": "binary", "loss": "bce", "stage": "prior", "column": "gender"},
            {"name": "sbp", "kind": "regression", "loss": "l1", "center": 120, "scale": 20, "stage": "complex"},
        ]
    )
    assert table.subset(None) is table
    one = table.subset(["sex"])
    assert one.names == ["sex"] and one["sex"].column == "gender"
    assert table.subset("sbp").names == ["sbp"]
    assert table.columns_outside(one) == ["age", "sbp"]
    with pytest.raises(ValueError, match="factor_subset"):
        table.subset(["bmi"])
    with pytest.raises(ValueError, match="factor_subset"):
        table.subset([])
