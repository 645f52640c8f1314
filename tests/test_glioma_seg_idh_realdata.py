"""glioma_seg_idh on the real public images in ../shared/data (skipped where that folder is absent).

Short runs, not a quality check: the bundle reads TCGA-LGG (t1/t1ce/flair, 0/1 masks, labels.csv with IDH status)
and BraTS 2015 (flair/t1ce, labels 0-4, no IDH, 240x240x155 volumes larger than the crop) with only overrides. The
quality numbers come from `python -m benchmarks.quality` (see the bundle's docs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bundle_cli import REAL_DATA, run_bundle

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
BUNDLE = "glioma_seg_idh"
FAST = {
    "features": [8, 16, 32, 64],
    "samples_per_case": 2,
    "batch_size": 8,
    "epochs": 1,
    "val_interval": 1,
    "progress_bar": False,
    "n_bootstrap": 50,
}


def _need(name: str) -> Path:
    src = REAL_DATA / name
    if not src.is_dir():
        pytest.skip(f"real data not found at {src} (../shared/data is not present on this machine)")
    return src


def test_lgg_train_evaluate_with_idh_labels(tmp_path):
    src = _need("lgg")
    root = tmp_path / "bundle"
    over = {"dataset_dir": str(src), "bundle_root": str(root), "train_fraction": 0.25, **FAST}
    run_bundle(BUNDLE, "train.json", over)
    run_bundle(BUNDLE, ["train.json", "evaluate.json"],
        {**over, "eval_split": "test", "output_dir": str(tmp_path / "eval")}
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    labels = {r["patient"]: r["idh_status"] for r in csv.DictReader(open(src / "labels.csv"))}
    assert 10 <= metrics["n_cases"] <= 16  # the 15% test split of 88 patients
    assert 0 < metrics["n_idh_labelled"] <= metrics["n_cases"]
    assert metrics["n_cases"] - metrics["n_idh_labelled"] <= sum(v == "unknown" for v in labels.values())
    assert 0.0 <= metrics["dice_mean"] <= 1.0


def test_brats2015_regions_and_full_size_output(tmp_path):
    src = _need("brats2015")
    root = tmp_path / "bundle"
    over = {
        "dataset_dir": str(src),
        "bundle_root": str(root),
        "modalities": ["flair", "t1ce"],
        "seg_regions": {"wt": [1, 2, 3, 4], "tc": [1, 3, 4], "et": [4]},
        "sw_overlap": [0.25, 0.25, 0.0],
        **FAST,
        "batch_size": 4,
    }  # 2 training cases x 2 crops
    run_bundle(BUNDLE, "train.json", over)
    run_bundle(BUNDLE, ["train.json", "evaluate.json"],
        {**over, "eval_split": "test", "output_dir": str(tmp_path / "eval")}
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_cases"] == 1 and metrics["n_idh_labelled"] == 0 and metrics["idh_auc"] is None
    assert {"dice_wt", "dice_tc", "dice_et"} <= set(metrics)
    case = sorted(p for p in src.iterdir() if p.is_dir())[0]
    one = tmp_path / "one"
    one.mkdir()
    for m in ("flair", "t1ce"):
        (one / f"{case.name}_{m}.nii.gz").symlink_to(case / f"{case.name}_{m}.nii.gz")
    run_bundle(BUNDLE, "inference.json", {**over, "dataset_dir": str(one), "output_dir": str(tmp_path / "pred")})
    seg = nib.load(tmp_path / "pred" / case.name / f"{case.name}_seg.nii.gz")
    src_img = nib.load(case / f"{case.name}_flair.nii.gz")
    assert seg.shape == src_img.shape == (240, 240, 155) and np.allclose(seg.affine, src_img.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
