"""Question 2: quality at equal budget. Multi-task model vs each single-task model, per task, on real data, over
several seeds (95% CI by Student's t over seeds; one fixed patient-level split, the seeds vary training only).

Every strategy of a bundle trains with the bundle's own ``train.json`` defaults (the same epochs, sizes and data),
so the budget is equal by construction; evaluation is the bundle's ``evaluate.json`` on the test split.

    python -m benchmarks.quality --bundles fundus_glaucoma --seeds 0 1 2 --parallel 2
    python -m benchmarks.quality --bundles glioma_seg_idh --override epochs=20   # a quick, smaller budget

Writes ``<out>/quality_runs.csv`` (one row per run), ``<out>/quality.csv`` (mean and CI per bundle, strategy and
metric) and ``<out>/quality.png``. ``--fractions`` trains on part of the training labels (question 3 uses it).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.runner import Run, collect, execute_all, write_csv
from benchmarks.specs import REPO, SPECS, BundleSpec, get_spec
from benchmarks.stats import summarise


def comparison_rows(spec: BundleSpec, records: Sequence[dict]) -> list[dict]:
    """Per metric and training fraction: the multi-task model's mean [CI] beside its single-task model's."""
    metrics = [m.key for m in spec.metrics]
    summary = summarise(records, ["strategy", "train_fraction"], metrics)
    index = {(s["strategy"], float(s["train_fraction"])): s for s in summary}
    rows = []
    for fraction in sorted({float(s["train_fraction"]) for s in summary}):
        for m in spec.metrics:
            for strategy in (spec.mtl, m.stl):
                s = index.get((strategy, fraction))
                if s is None or strategy is None:
                    continue
                rows.append(
                    {
                        "bundle": spec.name,
                        "metric": m.key,
                        "label": m.label,
                        "higher_is_better": m.higher_is_better,
                        "strategy": strategy,
                        "model": "multi-task" if strategy == spec.mtl else "single-task",
                        "train_fraction": fraction,
                        "n_runs": s["n_runs"],
                        "mean": s[m.key],
                        "ci_low": s[f"{m.key}_ci_low"],
                        "ci_high": s[f"{m.key}_ci_high"],
                    }
                )
    return rows


def plot_quality(rows: Sequence[dict], path: Path, title: str) -> None:
    """One panel per (bundle, metric): multi-task vs single-task bars with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault((r["bundle"], r["label"]), []).append(r)
    n = max(1, len(panels))
    cols = min(4, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 3.0 * math.ceil(n / cols)), squeeze=False)
    for ax, ((bundle, label), items) in zip(axes.flat, panels.items()):
        names = [r["strategy"] for r in items]
        means = [r["mean"] for r in items]
        err = [
            [r["mean"] - r["ci_low"] if not math.isnan(r["ci_low"]) else 0 for r in items],
            [r["ci_high"] - r["mean"] if not math.isnan(r["ci_high"]) else 0 for r in items],
        ]
        colours = ["tab:blue" if r["model"] == "multi-task" else "tab:grey" for r in items]
        ax.bar(names, means, yerr=err, color=colours, capsize=4)
        arrow = "higher is better" if items[0]["higher_is_better"] else "lower is better"
        ax.set_title(f"{bundle}\n{label} ({arrow})", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings as a dict.

    Raises:
        SystemExit: an item has no ``=``.
    """
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise SystemExit(f"overrides must be key=value, got {bad}")
    return dict(kv.split("=", 1) for kv in items)


def build_parser(description: str, default_fractions: Sequence[float], default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="data set folder (one bundle only; default: its ../shared/data set)")
    parser.add_argument("--strategies", nargs="+", help="default: the bundle's multi-task and single-task ones")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fractions", nargs="+", type=float, default=list(default_fractions))
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for every run (e.g. epochs=20)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (1 on a 2-core CPU)")
    parser.add_argument("--out", default=str(REPO / default_out))
    parser.add_argument("--report_only", action="store_true", help="rebuild the CSVs and plot from finished runs")
    return parser


def run_benchmark(args: argparse.Namespace, name: str) -> list[dict]:
    """Run (or resume) the runs ``args`` describe, then write ``<name>_runs.csv`` and ``<name>.csv``; return the
    comparison rows."""
    out = Path(args.out).resolve()
    if args.dataset_dir and len(args.bundles) != 1:
        raise SystemExit("--dataset_dir needs exactly one bundle in --bundles")
    overrides = parse_overrides(args.override)
    runs: list[Run] = []
    for bundle in args.bundles:
        spec = get_spec(bundle)
        for strategy in args.strategies or list(spec.strategies):
            for fraction in args.fractions:
                for seed in args.seeds:
                    runs.append(Run(spec, strategy, seed, fraction, args.dataset_dir or "", overrides))
    runs.sort(key=lambda r: -r.fraction)  # longest runs first when several run at once
    if not args.report_only:
        for r in runs:
            data = Path(r.dataset_dir or r.spec.default_dataset_dir)
            if not data.is_dir():
                raise SystemExit(f"{r.spec.name}: data set folder {data} not found (give --dataset_dir)")
        by_bundle: dict[str, list[Run]] = {}
        for r in runs:
            by_bundle.setdefault(r.spec.name, []).append(r)
        for bundle, items in by_bundle.items():
            execute_all(items, out / bundle, args.parallel)
    all_records, rows = [], []
    for bundle in args.bundles:
        records = collect(out / bundle)
        all_records += records
        rows += comparison_rows(get_spec(bundle), records)
    write_csv(all_records, out / f"{name}_runs.csv")
    write_csv(rows, out / f"{name}.csv")
    return rows


def main() -> None:
    args = build_parser(__doc__, [1.0], "benchmarks/results/quality").parse_args()
    rows = run_benchmark(args, "quality")
    title = "Multi-task vs single-task at equal budget (mean, 95% CI over seeds)"
    plot_quality(rows, Path(args.out) / "quality.png", title)
    print(f"wrote {Path(args.out) / 'quality.csv'} and quality.png")


if __name__ == "__main__":
    main()
