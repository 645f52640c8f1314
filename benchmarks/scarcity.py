"""Question 3: data scarcity. Multi-task vs single-task models trained on 10%, 25%, 50% and 100% of the training
labels (the same patients left out for every strategy; one fixed split, several seeds), evaluated on the full test
split.

    python -m benchmarks.scarcity --bundles fundus_glaucoma --seeds 0 1 2 --parallel 2

Writes ``<out>/scarcity_runs.csv``, ``<out>/scarcity.csv`` (mean and 95% CI per bundle, strategy, fraction and
metric) and ``<out>/scarcity.png`` (metric vs training fraction, one panel per task metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.quality import build_parser, command_line, run_benchmark


def plot_scarcity(rows: Sequence[dict], path: Path) -> None:
    """One panel per (bundle, metric): mean with a 95% CI band against the training fraction, per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault((r["bundle"], r["label"], r["higher_is_better"]), []).append(r)
    n = max(1, len(panels))
    cols = min(4, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.4 * cols, 3.0 * math.ceil(n / cols)), squeeze=False)
    for ax, ((bundle, label, higher), items) in zip(axes.flat, panels.items()):
        for strategy in dict.fromkeys(r["strategy"] for r in items):
            pts = sorted((r for r in items if r["strategy"] == strategy), key=lambda r: r["train_fraction"])
            x = [100 * r["train_fraction"] for r in pts]
            multi = pts[0]["model"] == "multi-task"
            ax.plot(x, [r["mean"] for r in pts], "o-", label=strategy, color="tab:blue" if multi else "tab:grey")
            lo = [r["ci_low"] if not math.isnan(r["ci_low"]) else r["mean"] for r in pts]
            hi = [r["ci_high"] if not math.isnan(r["ci_high"]) else r["mean"] for r in pts]
            ax.fill_between(x, lo, hi, alpha=0.2, color="tab:blue" if multi else "tab:grey")
        ax.set_xscale("log")
        ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
        ax.set_xlabel("% of training labels", fontsize=8)
        ax.set_title(f"{bundle}\n{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Data scarcity: multi-task vs single-task (mean, 95% CI over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = build_parser(__doc__, [0.1, 0.25, 0.5, 1.0], "benchmarks/results/scarcity").parse_args()
    rows = run_benchmark(args, "scarcity", command=command_line("benchmarks.scarcity"))
    plot_scarcity(rows, Path(args.out) / "scarcity.png")
    print(f"wrote {Path(args.out) / 'scarcity.csv'} and scarcity.png")


if __name__ == "__main__":
    main()
