"""Constant baselines of cmr_fundus on a data set's test split: every regression factor predicted as its mean over
the training images (the number a model must beat), every binary factor's prevalence in the training images.

Uses the bundle's own datalist and patient-level split (same seed and fractions as train.json/evaluate.json):

    python benchmarks/cmr_fundus_baseline.py --dataset_dir ../shared/data/odir5k --extra_configs odir5k.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from monai.bundle import ConfigParser

    from common.metrics import mae, rmse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--extra_configs", nargs="*", default=[], help="config files merged after train.json")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    cfg_dir = REPO / "bundles" / "cmr_fundus" / "configs"
    config = ConfigParser()
    config.read_config([str(cfg_dir / "train.json"), *(str(cfg_dir / c) for c in args.extra_configs)])
    config["dataset_dir"] = args.dataset_dir
    table = config.get_parsed_content("factor_table")
    datalist = config.get_parsed_content("datalist")
    from common.data import select_split

    fractions = (config["val_fraction"], config["test_fraction"], config["seed"])
    train = np.stack([r["factors"] for r in select_split(datalist, "train", *fractions)])
    test_records = select_split(datalist, args.split, *fractions)
    test = np.stack([r["factors"] for r in test_records])
    out: dict[str, float | int] = {"n_images": len(test_records), "n_patients": len({r["case"] for r in test_records})}
    for k, f in enumerate(table):
        y = test[np.isfinite(test[:, k]), k]
        ref = float(np.nanmean(train[:, k]))
        if f.is_binary:
            out[f"{f.name}_train_prevalence"] = round(ref, 4)
            out[f"{f.name}_{args.split}_prevalence"] = round(float(np.mean(y)), 4) if len(y) else float("nan")
        else:
            out[f"{f.name}_train_mean"] = round(ref, 3)
            out[f"{f.name}_mean_baseline_mae"] = round(mae(np.full_like(y, ref), y), 3)
            out[f"{f.name}_mean_baseline_rmse"] = round(rmse(np.full_like(y, ref), y), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
