"""Train and evaluate brats_mtl's strategies (mtl, stl, pretrain_finetune) under the same budget.

For each strategy and training-set fraction it runs the bundle's own train.json then evaluate.json on the held-out
test split through the monai.bundle CLI, and appends one row per run to a CSV (metrics, wall time, epochs).

    python benchmarks/brats_mtl_compare.py --dataset_dir ../shared/data/lgg --out benchmarks/results/brats_mtl

Extra ``--override key=value`` pairs go to every train/evaluate run (e.g. ``--override epochs=60`` on a GPU).
A run whose metrics.json exists is not repeated (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.strategy_compare import run_config  # noqa: E402


def run(config: str, overrides: dict[str, str], log: Path) -> float:
    """Run one brats_mtl config through the monai.bundle CLI; return its wall time in seconds."""
    return run_config("brats_mtl", config, overrides, log)


def markdown_table(table: Path) -> str:
    """The results CSV as a markdown table (AUC with its 95% CI)."""
    rows = list(csv.DictReader(open(table)))
    lines = [
        "| strategy | training patients | test ROC-AUC [95% CI] | accuracy | MIM MSE | test slices / patients "
        "| train min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def f(k: str, r: dict = r) -> float:
            return float(r[k])

        lines.append(
            f"| {r['strategy']} | {float(r['train_fraction']):.0%} | {f('cls_auc'):.3f} [{f('cls_auc_ci_low'):.3f}, "
            f"{f('cls_auc_ci_high'):.3f}] | {f('cls_accuracy'):.3f} | {f('mim_mse'):.3f} | {r['n_slices']} / "
            f"{r['n_cases']} | {r['train_minutes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--out", default="benchmarks/results/brats_mtl")
    parser.add_argument("--strategies", nargs="+", default=["mtl", "stl", "pretrain_finetune"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.25])
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for train and evaluate")
    parser.add_argument("--report", action="store_true", help="only print results.csv as a markdown table")
    args = parser.parse_args()
    if args.report:
        print(markdown_table(Path(args.out) / "results.csv"))
        return
    extra = dict(kv.split("=", 1) for kv in args.override)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.csv"
    for fraction in args.fractions:
        for strategy in args.strategies:
            root = out / f"{strategy}_frac{fraction:g}"
            metrics_file = root / "eval" / "metrics.json"
            if metrics_file.exists():
                print(f"skip {root.name}: {metrics_file} exists")
                continue
            root.mkdir(parents=True, exist_ok=True)
            common = {"dataset_dir": args.dataset_dir, "bundle_root": str(root), **extra}
            train = {**common, "strategy": strategy, "train_fraction": fraction, "resume": "false"}
            t_train = run("train.json", train, root / "train.log")
            evaluate = {**common, "eval_split": "test", "output_dir": str(root / "eval")}
            run("evaluate.json", evaluate, root / "evaluate.log")
            metrics = json.loads(metrics_file.read_text())
            row = {"strategy": strategy, "train_fraction": fraction, "train_minutes": round(t_train / 60, 1), **metrics,
                   "overrides": " ".join(f"{k}={v}" for k, v in extra.items())}
            new = not table.exists()
            with open(table, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            print(json.dumps(row))


if __name__ == "__main__":
    main()
