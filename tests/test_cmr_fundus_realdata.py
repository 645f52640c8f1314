"""cmr_fundus on real photographs: a small patient subset of ODIR-5K (age, sex, diabetes, hypertension) and the 22
LES-AV images with real blood pressure (SBP/DBP). Skipped where ../shared/data is absent."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.data import DatasetError, read_factor_datalist, select_split
from tests.bundle_cli import REAL_DATA, bundle_configs, run_bundle

BUNDLE = "cmr_fundus"
CFG = bundle_configs(BUNDLE)
ODIR, LES_AV = REAL_DATA / "odir5k", REAL_DATA / "les_av"
SMALL = {"image_size": 64, "batch_size": 8, "encoder_channels": [8, 16, 16, 32], "expert_dim": 8, "hidden_dim": 8,
         "progress_bar": False}  # fmt: skip

pytestmark = pytest.mark.realdata


def _need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (../shared/data is absent on this machine)")


def _config(name: str) -> dict:
    return json.loads((CFG / name).read_text())


def _odir_subset(tmp_path: Path, n_patients: int) -> Path:
    rows = list(csv.DictReader(open(ODIR / "labels.csv")))
    patients = sorted({r["patient"] for r in rows}, key=int)[:n_patients]
    keep = [r for r in rows if r["patient"] in set(patients)]
    out = tmp_path / "odir_subset"
    (out / "images").mkdir(parents=True)
    for r in keep:
        shutil.copy(ODIR / "images" / r["image"], out / "images" / r["image"])
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return out


def test_odir5k_datalist_and_split_are_by_patient():
    _need(ODIR)
    cfg = _config("odir5k.json")
    records = read_factor_datalist(
        ODIR, cfg["factors"], labels_file=ODIR / "labels.csv", image_template=cfg["image_template"],
        patient_column=cfg["patient_column"], ignore_columns=cfg["ignore_columns"],
    )  # fmt: skip
    assert len(records) == 4897 and len({r["case"] for r in records}) == 2558
    values = np.stack([r["factors"] for r in records])
    assert np.isfinite(values).all() and set(np.unique(values[:, 1])) == {0.0, 1.0}
    parts = {s: select_split(records, s, 0.15, 0.15, seed=0) for s in ("train", "validation", "test")}
    patients = {s: {r["case"] for r in p} for s, p in parts.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["validation"])
    assert not (patients["validation"] & patients["test"])
    assert sum(len(p) for p in parts.values()) == 4897


@pytest.mark.slow
def test_odir5k_subset_train_and_evaluate(tmp_path):
    _need(ODIR)
    data = _odir_subset(tmp_path, 30)
    over = {"dataset_dir": str(data), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL}
    run_bundle(BUNDLE, ["train.json", "odir5k.json"], over)
    run_bundle(BUNDLE, ["train.json", "evaluate.json", "odir5k.json"], {**over, "output_dir": str(tmp_path / "eval")})
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    n_images = sum(1 for _ in (data / "images").iterdir())
    assert metrics["n_patients"] == 30 and metrics["n_images"] == n_images
    for key in ("age_mae", "age_rmse", "sex_auc", "sex_auc_ci_low", "diabetes_auc", "hypertension_auc"):
        assert key in metrics, key
    assert 0 < metrics["age_mae"] < 60  # years


def test_les_av_sbp_412_is_an_error_by_default():
    _need(LES_AV)
    cfg = _config("les_av.json")
    kwargs = dict(labels_file=LES_AV / "clinical.csv", image_template=cfg["image_template"],
                  patient_column=cfg["patient_column"], ignore_columns=cfg["ignore_columns"])  # fmt: skip
    with pytest.raises(
        DatasetError, match=r"clinical.csv: row 7: SBP=412 is outside the plausible range \[60, 260\] mmHg"
    ):
        read_factor_datalist(LES_AV, cfg["factors"], on_invalid="error", **kwargs)
    records = read_factor_datalist(LES_AV, cfg["factors"], on_invalid="exclude", **kwargs)
    sbp = np.array([r["factors"][2] for r in records])
    assert len(records) == 22 and int(np.isnan(sbp).sum()) == 1 and np.nanmax(sbp) < 260


@pytest.mark.slow
def test_les_av_blood_pressure_end_to_end(tmp_path):
    _need(LES_AV)
    over = {"dataset_dir": str(LES_AV), "bundle_root": str(tmp_path / "b"), "epochs": 2, "val_fraction": 0.2,
            "test_fraction": 0.2, **SMALL}  # fmt: skip
    log = run_bundle(BUNDLE, ["train.json", "les_av.json"], over)
    text = log.stdout + log.stderr
    assert "SBP=412 is outside the plausible range [60, 260] mmHg; value excluded (missing)" in text
    assert "excluded {'sbp value': 1} (on_invalid='exclude')" in text
    run_bundle(BUNDLE, ["train.json", "evaluate.json", "les_av.json"], {**over, "output_dir": str(tmp_path / "eval")})
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 22 and metrics["sbp_n"] == 21 and metrics["dbp_n"] == 22
    assert 0 < metrics["sbp_mae"] < 100 and 0 < metrics["dbp_mae"] < 60  # mmHg
