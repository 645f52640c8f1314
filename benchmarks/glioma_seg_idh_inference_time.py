"""CPU (or GPU) inference time per case of a trained glioma_seg_idh model, through the bundle's inference.json.

Runs inference on one split's cases of a data set (default: the held-out test patients) and reports the
evaluator's own run time (loading, preprocessing, sliding-window inference, post-processing, writing the NIfTI and
CSV/JSON outputs; process start-up and model construction excluded) per case, and the whole command's wall time.

    python benchmarks/glioma_seg_idh_inference_time.py --dataset_dir ../shared/data/lgg \\
        --bundle_root benchmarks/results/glioma_seg_idh/mtl_frac1 --out benchmarks/results/glioma_seg_idh_inference.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.strategy_compare import run_config  # noqa: E402
from common.data import build_brats_datalist, select_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--bundle_root", required=True, help="folder whose models/model.pt is timed")
    parser.add_argument("--split", default="test")
    parser.add_argument("--modalities", nargs="+", default=["t1", "t1ce", "flair"])
    parser.add_argument("--out", default="benchmarks/results/glioma_seg_idh_inference.csv")
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for inference.json")
    args = parser.parse_args()
    records = select_split(build_brats_datalist(args.dataset_dir, args.modalities), args.split, 0.15, 0.15, 0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cases"
        data.mkdir()
        for r in records:
            case_dir = Path(r["image"][0]).parent
            (data / r["case"]).symlink_to(case_dir.resolve(), target_is_directory=True)
        overrides = {
            "dataset_dir": str(data),
            "bundle_root": str(Path(args.bundle_root).resolve()),
            "output_dir": str(Path(tmp) / "pred"),
            "modalities": repr(args.modalities),
        }
        overrides.update(kv.split("=", 1) for kv in args.override)
        log = Path(args.out).resolve().with_suffix(".log")  # kept: run_config names it on failure
        log.parent.mkdir(parents=True, exist_ok=True)
        wall = run_config("glioma_seg_idh", "inference.json", overrides, log)
        text = log.read_text()
    match = re.search(r"Engine run finished\. Time taken: (\d+):(\d+):(\d+\.\d+)", text)
    engine = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else float("nan")
    row = {
        "dataset": Path(args.dataset_dir).name,
        "split": args.split,
        "n_cases": len(records),
        "engine_seconds": round(engine, 2),
        "seconds_per_case": round(engine / len(records), 2),
        "command_wall_seconds": round(wall, 1),
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "overrides": " ".join(args.override),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    new = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    print(row)


if __name__ == "__main__":
    main()
