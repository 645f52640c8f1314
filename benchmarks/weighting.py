"""Question 4: loss-weighting and gradient methods. Every method registered in ``common.weighting`` trains one
bundle's multi-task model with the same budget (the bundle's defaults, the same split, several seeds): test quality
per task, and the training-step time overhead of each method relative to equal weighting on the same batch.

    python -m benchmarks.weighting --bundle fundus_glaucoma --seeds 0 1 2 --parallel 2

Writes ``<out>/weighting_runs.csv``, ``<out>/weighting.csv`` (mean and 95% CI per method and metric, step seconds
and overhead) and ``<out>/weighting.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from benchmarks.cost import measure_strategy
from benchmarks.quality import parse_overrides
from benchmarks.runner import Run, collect, execute_all, write_csv
from benchmarks.specs import REPO, SPECS, get_spec
from benchmarks.stats import summarise
from common.weighting import WEIGHTINGS


def plot_weighting(rows: list[dict], metrics: list, path: Path) -> None:
    """One panel per metric (mean, 95% CI per method) and one for the step-time overhead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    names = [r["method"] for r in rows]
    for ax, m in zip(axes.flat, metrics):
        means = [r[m.key] for r in rows]
        err = [
            [r[m.key] - r[f"{m.key}_ci_low"] if not math.isnan(r[f"{m.key}_ci_low"]) else 0 for r in rows],
            [r[f"{m.key}_ci_high"] - r[m.key] if not math.isnan(r[f"{m.key}_ci_high"]) else 0 for r in rows],
        ]
        ax.bar(names, means, yerr=err, capsize=3, color="tab:blue")
        ax.set_title(f"{m.label} ({'higher' if m.higher_is_better else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax = axes.flat[n - 1]
    ax.bar(names, [r.get("step_overhead", math.nan) for r in rows], color="tab:orange")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_title("training step time / equal weighting", fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="fundus_glaucoma", choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="default: the bundle's ../shared/data set")
    parser.add_argument("--methods", nargs="+", default=sorted(WEIGHTINGS), choices=sorted(WEIGHTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for every run")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="device of the step-time measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method")
    parser.add_argument("--skip_timing", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/weighting"))
    parser.add_argument("--report_only", action="store_true", help="rebuild the CSVs and plot from finished runs")
    args = parser.parse_args()
    spec = get_spec(args.bundle)
    out = Path(args.out).resolve()
    data = args.dataset_dir or str(spec.default_dataset_dir)
    overrides = parse_overrides(args.override)
    runs = [
        Run(spec, spec.mtl, seed, 1.0, data, {**overrides, spec.weighting_override: m}, tag=m)
        for m in args.methods
        for seed in args.seeds
    ]
    if not args.report_only:
        execute_all(runs, out / spec.name, args.parallel)
    records = [r for r in collect(out / spec.name) if r.get("tag") in args.methods]
    for r in records:
        r["method"] = r["tag"]
    metrics = [m.key for m in spec.metrics]
    rows = summarise(records, ["method"], metrics + ["train_minutes"])
    if not args.skip_timing:
        torch.set_num_threads(1)
        steps = {}
        for m in args.methods:
            chosen = {**overrides, spec.weighting_override: m}
            row = measure_strategy(spec, spec.mtl, data, chosen, args.device, args.steps, 2)
            steps[m] = row["train_step_s"]
            print(m, row, flush=True)
        base = steps.get("ew")
        for r in rows:
            r["step_s"] = steps.get(r["method"], math.nan)
            r["step_overhead"] = r["step_s"] / base if base else math.nan
            r["timing_device"] = args.device
    write_csv(records, out / "weighting_runs.csv")
    write_csv(rows, out / "weighting.csv")
    plot_weighting(rows, list(spec.metrics), out / "weighting.png")
    print(f"wrote {out / 'weighting.csv'} and weighting.png")


if __name__ == "__main__":
    main()
