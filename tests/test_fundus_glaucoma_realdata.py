"""fundus_glaucoma on the real Drishti-GS1 photographs in ../shared/data (skipped where that folder is absent).

A short run, not a quality check: the bundle reads the real layout (1024 px JPEGs, 4-expert soft maps, labels.csv
with glaucoma, expert CDRs and the official split) with only size overrides, evaluates on the official test images
and writes full-size masks in each photograph's own size. Quality numbers come from `python -m benchmarks.quality`
(see the bundle's docs).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.bundle_cli import REAL_DATA, run_bundle

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
BUNDLE = "fundus_glaucoma"
FAST = {
    "features": [8, 16, 32, 64],
    "crop_size": 64,
    "locator_size": 64,
    "locator_features": [4, 8, 16, 32, 64, 4],
    "locator_epochs": 1,
    "epochs": 1,
    "val_interval": 1,
    "batch_size": 4,
    "locator_batch_size": 4,
    "progress_bar": False,
}


def _subset(tmp_path: Path, n_train: int = 10, n_test: int = 4) -> Path:
    src = REAL_DATA / "drishti_gs1"
    if not src.is_dir():
        pytest.skip(f"real data not found at {src} (../shared/data is not present on this machine)")
    rows = list(csv.DictReader((src / "labels.csv").open()))
    keep = [r for r in rows if r["source_split"] == "train"][:n_train] + [
        r for r in rows if r["source_split"] == "test"
    ][:n_test]
    dst = tmp_path / "drishti"
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for r in keep:
        shutil.copy(src / "images" / f"{r['image']}.jpg", dst / "images")
        for kind in ("disc", "cup"):
            shutil.copy(src / "masks" / f"{r['image']}_{kind}.png", dst / "masks")
    with (dst / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return dst


def test_drishti_train_evaluate_infer(tmp_path):
    data = _subset(tmp_path)
    root = tmp_path / "bundle"
    over = {"dataset_dir": str(data), "bundle_root": str(root), **FAST}
    run_bundle(BUNDLE, "train.json", over)
    small = {k: v for k, v in over.items() if k not in ("locator_epochs", "epochs", "val_interval", "batch_size",
                                                         "locator_batch_size", "progress_bar")}
    run_bundle(BUNDLE, ["train.json", "evaluate.json"],
        {**small, "eval_split": "test", "output_dir": str(tmp_path / "eval")}
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 4  # the official test images kept
    for key in ("disc_dice", "cup_dice", "vcdr_mae", "glaucoma_auc", "glaucoma_auc_ci_low", "glaucoma_auc_ci_high"):
        assert key in metrics
    infer_in = tmp_path / "infer"
    (infer_in / "images").mkdir(parents=True)
    first = sorted((data / "images").iterdir())[0]
    shutil.copy(first, infer_in / "images")
    run_bundle(BUNDLE, "inference.json", {**small, "dataset_dir": str(infer_in), "output_dir": str(tmp_path / "p")})
    case = first.stem
    assert Image.open(tmp_path / "p" / case / f"{case}_disc.png").size == Image.open(first).size
    row = next(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert row["case"] == case and 0.0 <= float(row["glaucoma_probability_head"]) <= 1.0
