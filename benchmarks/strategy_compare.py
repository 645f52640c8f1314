"""Train and evaluate a bundle's strategies (multi-task and single-task variants) under the same budget.

For each strategy and training-set fraction it runs the bundle's own ``train.json`` then ``evaluate.json`` (merged after
``train.json``) on the held-out test split through the monai.bundle CLI, and appends one row per run to ``<out>/results.csv`` (metrics,
training minutes, evaluation seconds per case, overrides).

    python benchmarks/strategy_compare.py --bundle glioma_seg_idh --dataset_dir ../shared/data/lgg \\
        --strategies mtl stl_seg stl_idh --strategy_override stl_idh:idh_aggregation=mean \\
        --out benchmarks/results/glioma_seg_idh
    python benchmarks/strategy_compare.py --out benchmarks/results/glioma_seg_idh --report dice_mean hd95_mean idh_auc

``--override key=value`` pairs go to every run (e.g. ``epochs=100`` on a GPU); ``--strategy_override
strategy:key=value`` to one strategy's runs (train and evaluate); ``--extra_configs`` are merged after the bundle's
train.json and evaluate.json (e.g. a data set's factor table: ``--extra_configs odir5k.json``). A run whose
metrics.json exists is not repeated (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.runner import run_config  # noqa: E402


def _cell(row: dict, key: str) -> str:
    value = row.get(key, "")
    if value in ("", "None", None):
        return "n/a"
    try:
        v = float(value)
    except ValueError:
        return str(value)
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if lo not in (None, "", "None") and hi not in (None, "", "None"):
        text += f" [{float(lo):.3f}, {float(hi):.3f}]"
    return text


def markdown_table(table: Path, columns: list[str]) -> str:
    """``results.csv`` as a markdown table: strategy, fraction, the metric ``columns`` (with 95% CI where the CSV
    has ``<key>_ci_low``/``_ci_high``), training minutes and evaluation seconds per case."""
    rows = list(csv.DictReader(open(table)))
    head = ["strategy", "training cases", *columns, "train min", "evaluate s/case"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["strategy"],
            f"{float(r['train_fraction']):.0%}",
            *(_cell(r, c) for c in columns),
            r["train_minutes"],
            r["eval_seconds_per_case"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pairs(items: list[str]) -> dict[str, str]:
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise SystemExit(f"overrides must be key=value, got {bad}")
    return dict(kv.split("=", 1) for kv in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="glioma_seg_idh")
    parser.add_argument("--dataset_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategies", nargs="+", default=["mtl"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0])
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for every run")
    parser.add_argument("--strategy_override", nargs="*", default=[], help="strategy:key=value overrides")
    parser.add_argument("--extra_configs", nargs="*", default=[], help="config files merged after train/evaluate.json")
    parser.add_argument("--report", nargs="*", help="only print results.csv as a markdown table of these metrics")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if args.report is not None:
        print(markdown_table(out / "results.csv", args.report))
        return
    if not args.dataset_dir:
        raise SystemExit("--dataset_dir is required to run")
    extra = _pairs(args.override)
    per_strategy: dict[str, dict[str, str]] = {}
    for item in args.strategy_override:
        strategy, _, kv = item.partition(":")
        per_strategy.setdefault(strategy, {}).update(_pairs([kv]))
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
            shared = {
                "dataset_dir": args.dataset_dir,
                "bundle_root": str(root),
                **extra,
                **per_strategy.get(strategy, {}),
            }
            t_train = run_config(
                args.bundle,
                ["train.json", *args.extra_configs],
                {
                    **shared,
                    "strategy": strategy,
                    "train_fraction": fraction,
                    "resume": "False",
                    "progress_bar": "False",
                },
                root / "train.log",
            )
            t_eval = run_config(
                args.bundle,
                ["train.json", "evaluate.json", *args.extra_configs],
                {**shared, "eval_split": "test", "output_dir": str(root / "eval")},
                root / "evaluate.log",
            )
            metrics = json.loads(metrics_file.read_text())
            n = metrics.get("n_cases") or metrics.get("n_images") or 1
            row = {
                "strategy": strategy,
                "train_fraction": fraction,
                "train_minutes": round(t_train / 60, 1),
                "eval_seconds_per_case": round(t_eval / n, 2),
                **metrics,
                "overrides": " ".join(f"{k}={v}" for k, v in {**extra, **per_strategy.get(strategy, {})}.items()),
            }
            new = not table.exists()
            with open(table, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
