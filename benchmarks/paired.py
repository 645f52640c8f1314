"""Paired comparison of the multi-task model with each single-task model on the same test cases; and of any two
evaluations of the same cases (e.g. bf16 vs fp32, one setting vs another), from the command line:

    python -m benchmarks.paired a/eval/per_case.csv b/eval/per_case.csv --metrics dice_mean idh_auc --names bf16 fp32

For every run pair that differs only in the strategy (same bundle, data fraction, tag, seed and fold: the same
split and the same test cases), the two runs' ``eval/per_case.csv`` rows are lined up case by case; the pairs of all
seeds and folds are pooled, and per bundle and headline metric :func:`benchmarks.stats.paired_difference` gives the
difference MTL minus single-task with a case-level bootstrap 95% CI and a Wilcoxon signed-rank p-value.

A headline metric ``<key>`` of ``metrics.json`` is compared through the per-case columns that define it: the column
``<key>`` itself (its mean over the samples: Dice, HD95, absolute errors, 0/1 right answers), or, for a ROC-AUC
``<stem>_auc``, the columns ``<stem>_label`` and ``<stem>_prob`` (the AUC recomputed on every resample).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.runner import run_folder_name, write_csv
from benchmarks.specs import BundleSpec
from benchmarks.stats import paired_difference, verdict

__all__ = ["PER_CASE", "compare_evaluations", "paired_markdown", "paired_rows", "read_per_case", "verdict_line",
           "write_paired"]

#: Where a run's per-case metrics are, under its folder.
PER_CASE = Path("eval") / "per_case.csv"


def read_per_case(path: Path) -> list[dict]:
    """Rows of a ``per_case.csv``; numbers as floats (an empty cell is NaN), the first column (the case) as text."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        case = (reader.fieldnames or ["case"])[0]
        rows = []
        for r in reader:
            row = {}
            for k, v in r.items():
                if k == case:
                    row["case"] = v
                    continue
                try:
                    row[k] = float(v) if v != "" else math.nan
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows


def _align(a: list[dict], b: list[dict], where: str) -> None:
    """Check two runs evaluated the same samples in the same order (case by case)."""
    if [r["case"] for r in a] != [r["case"] for r in b]:
        raise ValueError(f"{where}: the two runs' per_case.csv rows are not the same cases in the same order.")


def _columns(key: str, header: Sequence[str]) -> tuple[str, str | None] | None:
    """The per-case value column of metric ``key`` and its label column (None for a mean), or None."""
    if key in header:
        return key, None
    stem = key[: -len("_auc")] if key.endswith("_auc") else None
    if stem and f"{stem}_prob" in header and f"{stem}_label" in header:
        return f"{stem}_prob", f"{stem}_label"
    return None


def _settings(record: dict, spec: BundleSpec) -> str:
    """The overrides a run was trained with beyond its strategy's own (the budget: epochs, sizes), or 'defaults'."""
    own = {f"{k}={v}" for k, v in spec.strategy_overrides(record["strategy"]).items()}
    extra = [o for o in str(record.get("overrides", "")).split() if o not in own]
    return " ".join(extra) or "defaults"


def paired_rows(spec: BundleSpec, records: Sequence[dict], folder: Path, n_bootstrap: int = 2000) -> list[dict]:
    """Per headline metric with a single-task model and training fraction: the pooled paired comparison.

    Args:
        spec: the bundle's benchmark settings.
        records: the bundle's ``run.json`` records (:func:`benchmarks.runner.collect`).
        folder: the bundle's run folders' parent.
        n_bootstrap: bootstrap resamples.
    """
    index = {
        (r["strategy"], r.get("tag", ""), float(r["train_fraction"]), r["seed"], r.get("fold")): r for r in records
    }
    out = []
    fractions = sorted({float(r["train_fraction"]) for r in records}, reverse=True)
    for m in spec.metrics:
        if m.stl is None:
            continue
        for fraction in fractions:
            a, b, labels, cases, pairs, folds, seeds = [], [], [], [], 0, set(), set()
            minutes: dict[str, list[float]] = {"mtl": [], "stl": []}
            settings: set[str] = set()
            for (strategy, tag, frac, seed, fold), rec in index.items():
                other = index.get((m.stl, tag, frac, seed, fold))
                if strategy != spec.mtl or frac != fraction or other is None:
                    continue
                mtl_rows = read_per_case(folder / run_folder_name(spec.mtl, frac, seed, tag, fold) / PER_CASE)
                stl_rows = read_per_case(folder / run_folder_name(m.stl, frac, seed, tag, fold) / PER_CASE)
                _align(mtl_rows, stl_rows, f"{spec.name} {spec.mtl}/{m.stl} seed {seed} fold {fold}")
                cols = _columns(m.key, list(mtl_rows[0]) if mtl_rows else [])
                if cols is None or (stl_rows and cols[0] not in stl_rows[0]):
                    continue
                value, label = cols
                a += [r[value] for r in mtl_rows]
                b += [r[value] for r in stl_rows]
                labels += [r[label] for r in mtl_rows] if label else []
                cases += [r["case"] for r in mtl_rows]
                pairs += 1
                minutes["mtl"].append(float(rec.get("train_minutes", math.nan)))
                minutes["stl"].append(float(other.get("train_minutes", math.nan)))
                settings.add(_settings(rec, spec))
                seeds.add(seed)
                folds.add(fold)
            if not pairs:
                continue
            res = paired_difference(a, b, cases, labels if labels else None, n_bootstrap=n_bootstrap)
            out.append(
                {
                    "bundle": spec.name,
                    "metric": m.key,
                    "label": m.label,
                    "higher_is_better": m.higher_is_better,
                    "mtl": spec.mtl,
                    "stl": m.stl,
                    "train_fraction": fraction,
                    "n_pairs": pairs,
                    "n_seeds": len(seeds),
                    "n_folds": len([f for f in folds if f is not None]) or 1,
                    "n_cases": res["n_cases"],
                    "n_samples": res["n_samples"],
                    "mtl_value": res["a"],
                    "stl_value": res["b"],
                    "difference": res["difference"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "p_wilcoxon": res["p_value"],
                    "wilcoxon_on": "|label - probability|" if labels else "per-case value",
                    "verdict": verdict(res["difference"], res["ci_low"], res["ci_high"], m.higher_is_better),
                    "mtl_train_minutes": round(sum(minutes["mtl"]) / pairs, 2),
                    "stl_train_minutes": round(sum(minutes["stl"]) / pairs, 2),
                    "settings": "; ".join(sorted(settings)),
                }
            )
    return out


def _num(v, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def _p(v) -> str:
    """A p-value: three decimals, ``< 0.001`` below that."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if math.isnan(f) else ("< 0.001" if f < 0.001 else f"{f:.3f}")


def verdict_line(row: dict) -> str:
    """``bundle, metric (training fraction): verdict (p = ...)``."""
    frac, p = float(row["train_fraction"]), _p(row["p_wilcoxon"])
    where = f" at {frac:.0%} of the training labels" if frac < 1 else ""
    return (
        f"{row['bundle']}, {row['label']} ({row['metric']}, {row['mtl']} vs {row['stl']}){where}: {row['verdict']} "
        f"(Wilcoxon p {p if p.startswith('<') else '= ' + p}; {row['n_cases']} cases, {row['n_seeds']} seed(s), "
        f"{row['n_folds']} fold(s))"
    )


def paired_markdown(rows: Sequence[dict]) -> str:
    """The verdict lines, then a table of the paired comparisons."""
    lines = [f"- {verdict_line(r)}" for r in rows] + [""]
    head = ["bundle", "metric", "training labels", "MTL", "single-task", "MTL - single-task [95% CI]", "Wilcoxon p",
            "cases", "seeds", "folds"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        arrow = "higher" if str(r["higher_is_better"]) == "True" else "lower"
        cells = [
            r["bundle"], f"{r['label']} ({arrow} better)", f"{float(r['train_fraction']):.0%}",
            f"{r['mtl']}: {_num(r['mtl_value'])}", f"{r['stl']}: {_num(r['stl_value'])}",
            f"{_num(r['difference'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]", _p(r["p_wilcoxon"]),
            str(r["n_cases"]), str(r["n_seeds"]), str(r["n_folds"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    budgets = {}
    for r in rows:
        if "settings" in r:
            key = (r["bundle"], r["mtl"], r["stl"])
            budgets[key] = (
                f"- {r['bundle']}, {r['mtl']} vs {r['stl']}: trained with {r['settings']}; "
                f"{_num(r['mtl_train_minutes'], 1)} vs {_num(r['stl_train_minutes'], 1)} training minutes per run"
            )
    if budgets:
        lines += ["", "Budgets (train.json overrides beyond the strategy; mean wall minutes of one training run):", ""]
        lines += list(budgets.values())
    return "\n".join(lines) + "\n"


def write_paired(rows: Sequence[dict], out: Path) -> None:
    """Write ``<out>/paired.csv`` and ``<out>/paired.md``."""
    write_csv(rows, out / "paired.csv")
    (out / "paired.md").write_text(paired_markdown(rows))


def compare_evaluations(
    path_a: Path, path_b: Path, metrics: Sequence[str], n_bootstrap: int = 2000
) -> list[dict[str, float | str]]:
    """Paired difference ``a - b`` of two evaluations of the same cases (their ``per_case.csv``), per metric.

    Args:
        path_a: the first evaluation's ``per_case.csv``.
        path_b: the second's, of the same cases in the same order.
        metrics: ``metrics.json`` keys defined by per-case columns (a mean column, or ``<stem>_auc`` from
            ``<stem>_label`` and ``<stem>_prob``).
        n_bootstrap: bootstrap resamples (whole cases).

    Raises:
        ValueError: the files hold other cases, or a metric has no per-case column (the message names it).
    """
    rows_a, rows_b = read_per_case(Path(path_a)), read_per_case(Path(path_b))
    _align(rows_a, rows_b, f"{path_a} vs {path_b}")
    out = []
    for key in metrics:
        cols = _columns(key, list(rows_a[0]) if rows_a else [])
        if cols is None or (rows_b and cols[0] not in rows_b[0]):
            raise ValueError(f"metric {key!r} has no per-case column in {path_a} and {path_b}.")
        value, label = cols
        res = paired_difference(
            [r[value] for r in rows_a], [r[value] for r in rows_b], [r["case"] for r in rows_a],
            [r[label] for r in rows_a] if label else None, n_bootstrap=n_bootstrap,
        )  # fmt: skip
        out.append({"metric": key, **res})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Paired difference of two evaluations of the same cases.")
    parser.add_argument("per_case", nargs=2, type=Path, help="the two per_case.csv files (a, then b)")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json keys, e.g. dice_mean idh_auc")
    parser.add_argument("--names", nargs=2, default=["a", "b"], help="names of the two evaluations")
    parser.add_argument("--n_bootstrap", type=int, default=2000)
    args = parser.parse_args()
    a, b = args.names
    print(f"| metric | {a} | {b} | {a} - {b} [95% CI] | Wilcoxon p | cases |")
    print("|---|---|---|---|---|---|")
    for r in compare_evaluations(*args.per_case, args.metrics, args.n_bootstrap):
        print(
            f"| {r['metric']} | {_num(r['a'])} | {_num(r['b'])} | {_num(r['difference'])} "
            f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}] | {_p(r['p_value'])} | {r['n_cases']} |"
        )


if __name__ == "__main__":
    main()
