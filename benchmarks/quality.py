"""Question 2: quality at equal budget. Multi-task model vs each single-task model, per task, on real data, over
several seeds (95% CI by Student's t over seeds; one fixed patient-level split, the seeds vary training only).

Every strategy of a bundle trains with the bundle's own ``train.json`` defaults (the same epochs, sizes and data),
so the budget is equal by construction; evaluation is the bundle's ``evaluate.json`` on the test split.

    python -m benchmarks.quality --bundles fundus_glaucoma --seeds 0 1 2 --parallel 2
    python -m benchmarks.quality --bundles glioma_seg_idh --override epochs=20   # a quick, smaller budget

Writes ``<out>/quality_runs.csv`` (one row per run), ``<out>/quality.csv`` (mean and CI per bundle, strategy and
metric) and ``<out>/quality.png``. ``--fractions`` trains on part of the training labels (question 3 uses it).

Paired evidence, case by case: ``--folds K`` runs K-fold patient-level cross-validation (fold k trains on the other
folds' patients, with the bundle's own validation share carved from them, and is evaluated on fold k, so every case
is a test case once; the folds are the same for every seed), and ``--paired`` compares each multi-task run with the
single-task run of the same seed and fold on the same cases (``benchmarks/paired.py``), pooled over seeds and
folds: ``<out>/paired.csv`` and ``<out>/paired.md`` (a verdict line per bundle and metric, then a table):

    python -m benchmarks.quality --bundles fundus_glaucoma --folds 5 --seeds 0 1 --paired

Any strategy of a bundle can be compared, not only its multi-task and single-task ones (e.g. brats_mtl's
``pretrain_finetune``, fundus_glaucoma's ``cool``), with overrides for one strategy only, and the runs printed as a
markdown table of chosen metrics (with the bootstrap CI ``evaluate.json`` writes beside a metric, where it does):

    python -m benchmarks.quality --bundles brats_mtl --strategies mtl stl pretrain_finetune --seeds 0 \\
        --fractions 1 0.25 --table cls_auc cls_accuracy mim_mse n_slices n_cases
    python -m benchmarks.quality --bundles fundus_glaucoma --strategies cool --seeds 0 \\
        --strategy_override cool:epochs=50 cool:val_interval=10 --tag epochs50 --table
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.paired import paired_markdown, paired_rows, write_paired
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


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value in ("", "None", None):
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "n/a"
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    if float(v).is_integer() and "." not in str(value):
        text = str(int(v))  # counts (n_cases, n_slices) stay integers
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if lo not in (None, "", "None") and hi not in (None, "", "None"):
        text += f" [{float(lo):.3f}, {float(hi):.3f}]"
    return text


def runs_table(records: Sequence[dict], columns: Sequence[str]) -> str:
    """Runs (``run.json`` records) as a markdown table: strategy, tag, training fraction, seed, the metric
    ``columns`` (each with its 95% CI where the record has ``<key>_ci_low``/``_ci_high``), training minutes and
    evaluation seconds per case."""
    head = ["strategy", "training cases", "seed", *columns, "train min", "evaluate s/case"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = f"{r['strategy']} ({r['tag']})" if r.get("tag") else str(r["strategy"])
        cells = [
            name,
            f"{float(r['train_fraction']):.0%}",
            str(r.get("seed", "")),
            *(_cell(r, c) for c in columns),
            str(r.get("train_minutes", "")),
            str(r.get("eval_seconds_per_case", "")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings as a dict.

    Raises:
        SystemExit: an item has no ``=``.
    """
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise SystemExit(f"overrides must be key=value, got {bad}")
    return dict(kv.split("=", 1) for kv in items)


def parse_strategy_overrides(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``strategy:key=value`` strings as strategy -> overrides.

    Raises:
        SystemExit: an item has no strategy or no ``=``.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        strategy, sep, kv = item.partition(":")
        if not sep or not strategy:
            raise SystemExit(f"strategy overrides must be strategy:key=value, got '{item}'")
        out.setdefault(strategy, {}).update(parse_overrides([kv]))
    return out


def build_parser(description: str, default_fractions: Sequence[float], default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="data set folder (one bundle only; default: its ../shared/data set)")
    parser.add_argument("--strategies", nargs="+", help="default: the bundle's multi-task and single-task ones")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fractions", nargs="+", type=float, default=list(default_fractions))
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for every run (e.g. epochs=20)")
    parser.add_argument(
        "--strategy_override", nargs="*", default=[], help="strategy:key=value overrides for one strategy's runs"
    )
    parser.add_argument(
        "--extra_configs",
        nargs="*",
        help="configs merged after train/evaluate.json (one bundle only; default: its spec's)",
    )
    parser.add_argument(
        "--folds", type=int, help="K-fold patient-level cross-validation: K runs per strategy and seed, one per fold"
    )
    parser.add_argument(
        "--paired", action="store_true", help="compare MTL and single-task case by case: <out>/paired.csv and .md"
    )
    parser.add_argument("--n_bootstrap", type=int, default=2000, help="bootstrap resamples of the paired CIs")
    parser.add_argument("--tag", default="", help="suffix of the run folders (runs of other settings side by side)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (1 on a 2-core CPU)")
    parser.add_argument("--out", default=str(REPO / default_out))
    parser.add_argument("--report_only", action="store_true", help="rebuild the CSVs and plot from finished runs")
    parser.add_argument(
        "--table", nargs="*", metavar="METRIC", help="print the runs as a markdown table of these metrics "
        "(none named: the bundle's headline metrics)"
    )  # fmt: skip
    return parser


def record_command(folder: Path, command: str) -> None:
    """Append ``command`` to ``<folder>/commands.txt`` (once), so a report can show what produced the runs."""
    path = folder / "commands.txt"
    known = path.read_text().splitlines() if path.exists() else []
    if command not in known:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*known, command]) + "\n")


def command_line(module: str) -> str:
    """How this process was started, as ``python -m <module> <arguments>``."""
    return " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])


def run_benchmark(args: argparse.Namespace, name: str, command: str | None = None) -> list[dict]:
    """Run (or resume) the runs ``args`` describe, then write ``<name>_runs.csv`` and ``<name>.csv``; return the
    comparison rows. ``command`` (the command line that asked for the runs) is kept in each bundle's
    ``commands.txt``."""
    out = Path(args.out).resolve()
    for option in ("dataset_dir", "extra_configs"):
        if getattr(args, option) is not None and len(args.bundles) != 1:
            raise SystemExit(f"--{option} needs exactly one bundle in --bundles")
    overrides = parse_overrides(args.override)
    per_strategy = parse_strategy_overrides(args.strategy_override)
    folds = getattr(args, "folds", None)
    if folds is not None and folds < 2:
        raise SystemExit(f"--folds must be at least 2, got {folds}")
    if folds is not None and ({"fold", "num_folds"} & set(overrides)):
        raise SystemExit("--folds sets fold and num_folds: do not override them too")
    runs: list[Run] = []
    for bundle in args.bundles:
        spec = get_spec(bundle)
        if args.extra_configs is not None:
            spec = dataclasses.replace(spec, extra_configs=tuple(args.extra_configs))
        strategies = args.strategies or list(spec.strategies)
        unknown = sorted(set(per_strategy) - set(strategies))
        if unknown:
            raise SystemExit(f"--strategy_override names strategies that are not run: {unknown}")
        for strategy in strategies:
            spec.strategy_overrides(strategy)  # a ValueError names the bundle's strategies
            for fraction in args.fractions:
                for seed in args.seeds:
                    run_overrides = {**overrides, **per_strategy.get(strategy, {})}
                    for fold in range(folds) if folds is not None else [None]:
                        runs.append(
                            Run(spec, strategy, seed, fraction, args.dataset_dir or "", run_overrides, args.tag,
                                fold=fold, num_folds=folds or 0)
                        )  # fmt: skip
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
            if command:
                record_command(out / bundle, command)
            execute_all(items, out / bundle, args.parallel)
    all_records, rows, paired = [], [], []
    for bundle in args.bundles:
        records = collect(out / bundle)
        all_records += records
        rows += comparison_rows(get_spec(bundle), records)
        if getattr(args, "paired", False):
            paired += paired_rows(get_spec(bundle), records, out / bundle, n_bootstrap=args.n_bootstrap)
    write_csv(all_records, out / f"{name}_runs.csv")
    write_csv(rows, out / f"{name}.csv")
    if getattr(args, "paired", False):
        write_paired(paired, out)
        print(f"\npaired comparison (MTL minus single-task, same cases), written to {out / 'paired.csv'}:\n")
        print(paired_markdown(paired))
    return rows


def main() -> None:
    args = build_parser(__doc__, [1.0], "benchmarks/results/quality").parse_args()
    rows = run_benchmark(args, "quality", command=command_line("benchmarks.quality"))
    title = "Multi-task vs single-task at equal budget (mean, 95% CI over seeds)"
    plot_quality(rows, Path(args.out) / "quality.png", title)
    print(f"wrote {Path(args.out) / 'quality.csv'} and quality.png")
    if args.table is not None:
        for bundle in args.bundles:
            columns = args.table or [m.key for m in get_spec(bundle).metrics]
            print(f"\n{bundle}\n\n{runs_table(collect(Path(args.out).resolve() / bundle), columns)}")


if __name__ == "__main__":
    main()
