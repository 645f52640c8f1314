"""Reference points for a trained fundus_glaucoma run on held-out images: what localisation alone buys, and the
ceiling of a vCDR-only glaucoma score.

For each test image it reports (CSV + a markdown summary):

* the bundle's Dice on full-size masks (its own locator, crop model, paste-back);
* the **constant-mask baseline**: the same locator and crop box, but the mean training mask (disc and cup soft
  maps averaged over the training images' crops around their true discs) pasted instead of the model's output.
  Dice on crops centred on the true disc says little (a mean mask scores high there); this shows what the
  segmentation model adds to localisation;
* the glaucoma AUC of the experts' own mean CDR (the ceiling of a vCDR-only score) beside the bundle's;
* CPU inference seconds per image (both stages, paste-back and vCDR).

    python -m benchmarks.fundus_glaucoma_baselines --run benchmarks/results/quality/fundus_glaucoma/mtl_frac1_seed0 \\
        --dataset_dir ../shared/data/drishti_gs1 --out benchmarks/results/fundus_glaucoma/baselines_mtl.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.specs import REPO


def _dice(pred: torch.Tensor, true: torch.Tensor) -> float:
    denom = float(pred.sum() + true.sum())
    return 1.0 if denom == 0 else float(2 * (pred & true).sum()) / denom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="bundle_root of a trained run (holds models/)")
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--out", required=True, help="CSV path (a .md summary is written beside it)")
    parser.add_argument("--override", nargs="*", default=[], help="key=value config overrides (JSON values)")
    args = parser.parse_args()

    from monai.bundle import ConfigParser

    from common.data import select_split
    from common.metrics import roc_auc, vertical_cdr
    from common.transforms import crop_box_from_mask, crop_square, paste_crop

    torch.set_grad_enabled(False)
    run = Path(args.run)
    cfg = ConfigParser()
    configs = REPO / "bundles" / "fundus_glaucoma" / "configs"
    cfg.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])  # evaluate.json overrides train.json
    overrides = {"dataset_dir": args.dataset_dir, "ckpt_dir": str(run / "models"), "eval_split": "test"}
    for item in args.override:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    cfg.update(overrides)
    locator, network = cfg.get_parsed_content("locator"), cfg.get_parsed_content("network")
    locator.load_state_dict(torch.load(run / "models" / "locator.pt", weights_only=True, map_location="cpu"))
    network.load_state_dict(torch.load(run / "models" / "model.pt", weights_only=True, map_location="cpu"))
    network.eval()
    inferer = cfg.get_parsed_content("inferer")
    crop_size, crop_factor = int(cfg["crop_size"]), float(cfg["crop_factor"])
    load = cfg.get_parsed_content("preprocessing")

    # mean training mask in crop coordinates (crops around the true disc, as the bundle trains)
    train = select_split(
        cfg.get_parsed_content("datalist"), "train", cfg["val_fraction"], cfg["test_fraction"], cfg["seed"],
        split_key=cfg["split_key"],
    )
    mean_mask = torch.zeros(2, crop_size, crop_size)
    for rec in train:
        seg = load(rec)["seg"]
        box = crop_box_from_mask(seg[0], crop_factor)
        mean_mask += crop_square(seg, box, crop_size)
    mean_mask /= len(train)

    rows, seconds = [], []
    for rec in cfg.get_parsed_content("records"):
        data = load(rec)
        image, seg = data["image"][None], data["seg"] > 0.5
        start = time.perf_counter()
        out = inferer(image, network)
        seconds.append(time.perf_counter() - start)
        pred = out["seg"][0] > 0
        box = out["crop_box"][0].tolist()
        const = paste_crop(mean_mask[None], box, image.shape[-2], image.shape[-1], fill=0.0)[0] >= 0.5
        const_cup = const[1] & const[0]
        rows.append(
            {
                "case": rec["case"],
                "glaucoma": rec["glaucoma"],
                "cdr_experts": round(rec["cdr"], 4),
                "disc_found": int(out["disc_found"][0]),
                "disc_dice": round(_dice(pred[0], seg[0]), 4),
                "cup_dice": round(_dice(pred[1], seg[1]), 4),
                "const_disc_dice": round(_dice(const[0], seg[0]), 4),
                "const_cup_dice": round(_dice(const_cup, seg[1]), 4),
                "vcdr": round(float(out["vcdr"][0]), 4),
                "const_vcdr": round(vertical_cdr(const[0].numpy(), const_cup.numpy()), 4),
                "p_fused": round(float(torch.sigmoid(out["glaucoma_fused"][0, 0])), 4),
                "seconds": round(seconds[-1], 3),
            }
        )
    out_csv = Path(args.out)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def col(k: str) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype=float)

    labels = col("glaucoma")
    summary = {
        "n_images": len(rows),
        "disc_dice": col("disc_dice").mean(),
        "cup_dice": col("cup_dice").mean(),
        "const_disc_dice": col("const_disc_dice").mean(),
        "const_cup_dice": col("const_cup_dice").mean(),
        "vcdr_mae": np.abs(col("vcdr") - col("cdr_experts")).mean(),
        "const_vcdr_mae": np.abs(col("const_vcdr") - col("cdr_experts")).mean(),
        "glaucoma_auc": roc_auc(col("p_fused"), labels),
        "expert_cdr_auc": roc_auc(col("cdr_experts"), labels),
        "disc_found": int(col("disc_found").sum()),
        "seconds_per_image": float(np.mean(seconds)),
        "torch_threads": torch.get_num_threads(),
    }
    lines = ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()
    ]
    out_csv.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
