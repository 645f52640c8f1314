"""brats_mtl on the real public images in ../shared/data (skipped where that folder is absent).

A short run, not a quality check: it proves the bundle reads both real layouts (TCGA-LGG with t1/flair/t1ce and
0/1 masks; BraTS 2015 with flair/t1ce, a brain mask file and labels 0-4) with no config change besides
--dataset_dir. The quality numbers come from `python -m benchmarks.quality` (see the bundle's docs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bundle_cli import REAL_DATA, run_bundle

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
SMALL = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mask_patch_size": 8}


def _subset(src: Path, dst: Path, n: int) -> Path:
    """A folder of symlinks to the first ``n`` case folders of ``src`` (and nothing else)."""
    dst.mkdir()
    for case in sorted(p for p in src.iterdir() if p.is_dir())[:n]:
        (dst / case.name).symlink_to(case, target_is_directory=True)
    return dst


@pytest.mark.parametrize("name, n_cases", [("lgg", 10), ("brats2015", 4)])
def test_train_and_evaluate_on_real_data(name, n_cases, tmp_path):
    src = REAL_DATA / name
    if not src.is_dir():
        pytest.skip(f"real data not found at {src} (../shared/data is not present on this machine)")
    data = _subset(src, tmp_path / name, n_cases)
    root = tmp_path / "bundle"
    overrides = {"dataset_dir": str(data), "bundle_root": str(root), **SMALL}
    # with 4 BraTS cases the 15%/15% split still leaves 1 validation and 1 test case
    run_bundle("brats_mtl", "train.json", {**overrides, "epochs": 1, "batch_size": 16, "progress_bar": False})
    run_bundle("brats_mtl", ["train.json", "evaluate.json"],
        {**overrides, "output_dir": str(tmp_path / "eval"), "n_bootstrap": 50}
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_cases"] == n_cases
    assert metrics["n_slices"] > 10 * n_cases
    assert metrics["cls_auc"] is not None and 0.0 <= metrics["cls_auc"] <= 1.0
