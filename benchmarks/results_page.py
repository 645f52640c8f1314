"""Build the results page ``docs/results.md`` from the benchmark outputs (CSVs, plots, task-affinity JSONs).

    python -m benchmarks.results_page \\
        --cost benchmarks/results/cpu/cost --speed benchmarks/results/gpu/speed \\
        --quality benchmarks/results/gpu/quality \\
        --scarcity benchmarks/results/gpu/scarcity --weighting benchmarks/results/gpu/weighting \\
        --affinity benchmarks/results/gpu/affinity benchmarks/results/cpu/affinity

After runs on this machine of one kind only, rebuild just those sections and keep the rest of the page as it is:

    python -m benchmarks.results_page --sections paired --paired benchmarks/results/cpu/quality_cv

Each section is written only when its CSV exists; when the quality benchmark ran with ``--paired``, the page leads
with its verdict lines (``paired.csv``: multi-task minus single-task on the same cases). The CSVs and plots are
copied next to the page (``docs/results/``), so the page stays whole without the (git-ignored) run folders.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks.paired import paired_markdown
from benchmarks.specs import REPO

COMMANDS = {
    "cost": "python -m benchmarks.cost --threads 1 --out benchmarks/results/cpu/cost",
    "quality": "python -m benchmarks.quality --seeds 0 1 2 --parallel 16 --out benchmarks/results/gpu/quality",
    "paired": (
        "python -m benchmarks.quality --folds 5 --seeds 0 1 2 --paired --parallel 16 "
        "--out benchmarks/results/gpu/quality"
    ),
    "scarcity": (
        "python -m benchmarks.scarcity --bundles fundus_glaucoma --seeds 0 1 2 --fractions 1 0.5 0.25 0.1 "
        "--parallel 16 --out benchmarks/results/gpu/scarcity"
    ),
    "weighting": (
        "python -m benchmarks.weighting --bundle fundus_glaucoma --seeds 0 1 2 --parallel 12 --skip_timing "
        "--out benchmarks/results/gpu/weighting  # then, for the step times on 1 CPU thread: --report_only"
    ),
    "speed": "python -m benchmarks.speed --device cuda:0 --steps 30 --warmup 5 --out benchmarks/results/gpu/speed",
    "affinity": (
        "python -m monai.bundle run --config_file bundles/<name>/configs/train.json --dataset_dir <data> "
        "--task_affinity_interval 10   # writes <bundle_root>/logs/task_affinity.json"
    ),
}


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.exists() else []


def _f(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a" if value in (None, "") else str(value)
    if math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"


def _ci(row: dict, key: str = "mean", lo: str = "ci_low", hi: str = "ci_high") -> str:
    text = _f(row.get(key))
    if row.get(lo) not in (None, "") and not math.isnan(float(row[lo])):
        text += f" [{_f(row[lo])}, {_f(row[hi])}]"
    return text


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _copy(src: Path, dest_dir: Path, name: str) -> str:
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest_dir / name)
    return f"results/{name}"


def _verdict(mtl: dict, stl: dict) -> str:
    """Which side is better, and whether the 95% CIs separate them."""
    higher = mtl["higher_is_better"] == "True"
    m, s = float(mtl["mean"]), float(stl["mean"])
    better = "multi-task" if (m > s) == higher else "single-task"
    try:
        apart = float(mtl["ci_low"]) > float(stl["ci_high"]) or float(stl["ci_low"]) > float(mtl["ci_high"])
    except (TypeError, ValueError):
        apart = False
    return f"{better} ({'CIs apart' if apart else 'CIs overlap'})" if m != s else "tie"


def paired_section(folder: Path, assets: Path) -> list[str]:
    """The verdict lines and table of ``paired.csv`` (multi-task minus single-task on the same test cases)."""
    rows = _rows(folder / "paired.csv")
    if not rows:
        return []
    lines = ["## Is multi-task better? Paired, case by case", ""]
    lines += [
        "Each multi-task run against the single-task run of the same seed and cross-validation fold, on the same "
        "test cases, pooled over seeds and folds: the difference MTL minus single-task with a 95% CI from a "
        "case-level (patient) bootstrap (AUCs recomputed on every resample) and a Wilcoxon signed-rank p-value. "
        "'Better' or 'worse' only where the CI excludes 0, in the metric's good direction.",
        "",
        paired_markdown(rows).rstrip(),
    ]
    _copy(folder / "paired.csv", assets, "paired.csv")
    if (folder / "quality_runs.csv").exists():  # the runs behind the pairs (one row per strategy, seed and fold)
        runs = _copy(folder / "quality_runs.csv", assets, "paired_runs.csv")
        lines += ["", f"Every run (its settings, training minutes and metrics): [{runs}]({runs})."]
    commands = [c for b in dict.fromkeys(r["bundle"] for r in rows) for c in _commands(folder / b)]
    lines += ["", "Commands:" if commands else f"Command: `{COMMANDS['paired']}`", ""]
    lines += [f"    {c}" for c in commands] + ([""] if commands else [])
    return lines


def _commands(folder: Path) -> list[str]:
    """The benchmark command lines that produced the runs under ``folder`` (its ``commands.txt``), if known."""
    path = folder / "commands.txt"
    return [c for c in path.read_text().splitlines() if c.strip()] if path.exists() else []


def cost_section(folder: Path, assets: Path) -> list[str]:
    rows = _rows(folder / "cost.csv")
    if not rows:
        return []
    lines = ["## 1. Cost: multi-task model vs the single-task models together", ""]
    ratios = [r for r in rows if r["strategy"] == "ratio"]
    dev = f"{ratios[0]['device']}, {ratios[0]['threads']} thread(s)" if ratios else ""
    lines += [
        f"Same training batch for every model ({dev}); median of the timed steps. Parameters: those that receive a "
        "gradient in the model's own training step. Target: training <= 0.6x, inference <= 0.55x.",
        "",
    ]
    body = []
    for r in rows:
        if r["strategy"] == "ratio":
            body.append([f"**{r['bundle']}**", f"**ratio** {r['tasks']}", f"**{_f(r['train_step_s'], 2)}x**",
                         f"**{_f(r['inference_s'], 2)}x**", f"**{_f(r['parameters'], 2)}x**",
                         "yes" if r.get("train_target_met") == "True" else "no",
                         "yes" if r.get("inference_target_met") == "True" else "no"])  # fmt: skip
        else:
            body.append([r["bundle"], f"{r['strategy']} ({r['tasks']}; batch {r['batch_size']} x {r['input_shape']})",
                         f"{_f(r['train_step_s'])} s", f"{_f(r['inference_s'])} s", f"{int(float(r['parameters'])):,}",
                         "", ""])  # fmt: skip
    head = ["bundle", "model", "training step", "inference", "parameters", "train <= 0.6x", "infer <= 0.55x"]
    lines += _table(head, body)
    if (folder / "cost.png").exists():
        lines += ["", f"![cost ratios]({_copy(folder / 'cost.png', assets, 'cost.png')})"]
    _copy(folder / "cost.csv", assets, "cost.csv")
    lines += ["", f"Command: `{COMMANDS['cost']}`", ""]
    return lines


def speed_section(folder: Path, assets: Path) -> list[str]:
    rows = _rows(folder / "speed.csv")
    if not rows:
        return []
    lines = ["## Speed switches: mixed precision, channels-last, EMA vs plain fp32", ""]
    lines += [
        f"Each bundle's `train.json` switches (`precision`, `memory_format`, `ema_decay`) on the same training batch "
        f"and validation case ({rows[0]['device']}, {rows[0]['threads']} thread(s)); the variants' steps are "
        f"interleaved, median of {rows[0]['steps']}. Speed-up = fp32 time / variant time (> 1: faster).",
        "",
    ]
    body = [[r["bundle"], r["variant"], f"batch {r['batch_size']} x {r['input_shape']}", _f(r["samples_per_s"], 1),
             f"{_f(r['train_speedup'], 2)}x", f"{_f(r['inference_s_per_case'])} s",
             f"{_f(r['inference_speedup'], 2)}x", f"{r['peak_memory_mb']} MiB" if r["peak_memory_mb"] else "-"]
            for r in rows]  # fmt: skip
    head = ["bundle", "variant", "input", "train samples/s", "train speed-up", "inference / case", "inference speed-up",
            "peak memory"]  # fmt: skip
    lines += _table(head, body)
    if rows[0].get("memory_kind"):
        kind = rows[0]["memory_kind"]
        if kind.startswith("child process"):
            kind = ("the peak resident set (`ru_maxrss`) of a process that loads the bundle's data, builds that "
                    "variant alone and runs two training steps and one inference (the loaded data dominate it)")
        lines += ["", f"Peak memory: {kind}."]
    if (folder / "speed.png").exists():
        lines += ["", f"![speed switches]({_copy(folder / 'speed.png', assets, 'speed.png')})"]
    _copy(folder / "speed.csv", assets, "speed.csv")
    commands = _commands(folder) or [COMMANDS["speed"]]
    lines += ["", "Command:" if len(commands) == 1 else "Commands:", ""] + [f"    {c}" for c in commands] + [""]
    return lines


def comparison_section(title: str, intro: str, folder: Path, name: str, assets: Path) -> list[str]:
    rows = _rows(folder / f"{name}.csv")
    if not rows:
        return []
    lines = [title, "", intro, ""]
    index = {(r["bundle"], r["metric"], r["train_fraction"], r["model"]): r for r in rows}
    body = []
    for (bundle, metric, fraction, model), r in index.items():
        if model != "multi-task":
            continue
        s = index.get((bundle, metric, fraction, "single-task"))
        if s is None:
            continue
        arrow = "higher" if r["higher_is_better"] == "True" else "lower"
        mtl_cell, stl_cell = f"{r['strategy']}: {_ci(r)}", f"{s['strategy']}: {_ci(s)}"
        label = f"{r['label']} ({arrow} better)"
        body.append([bundle, label, f"{float(fraction):.0%}", mtl_cell, stl_cell, r["n_runs"], _verdict(r, s)])
    lines += _table(["bundle", "metric", "training labels", "multi-task", "single-task", "seeds", "better"], body)
    if (folder / f"{name}.png").exists():
        lines += ["", f"![{name}]({_copy(folder / f'{name}.png', assets, f'{name}.png')})"]
    _copy(folder / f"{name}.csv", assets, f"{name}.csv")
    if (folder / f"{name}_runs.csv").exists():
        _copy(folder / f"{name}_runs.csv", assets, f"{name}_runs.csv")
    lines += ["", f"Command: `{COMMANDS[name]}`", ""]
    return lines


def weighting_section(folder: Path, assets: Path) -> list[str]:
    rows = _rows(folder / "weighting.csv")
    if not rows:
        return []
    metrics = [k for k in rows[0] if not k.endswith(("_ci_low", "_ci_high")) and k not in
               ("method", "n_runs", "train_minutes", "step_s", "step_overhead", "timing_device")]  # fmt: skip
    lines = ["## 4. Loss-weighting and gradient methods (fundus_glaucoma, same budget)", ""]
    lines += [
        "Every method of `common.weighting` trains the multi-task model with the bundle's defaults on the same split; "
        "mean [95% CI] over seeds on the Drishti-GS1 test set. Step overhead: the method's training step time over "
        "equal weighting's on the same batch.",
        "",
    ]
    body = []
    for r in rows:
        overhead = _f(r.get("step_overhead"), 2) + "x" if r.get("step_overhead") else "n/a"
        cells = [_ci(r, m, f"{m}_ci_low", f"{m}_ci_high") for m in metrics]
        body.append([r["method"], *cells, r["n_runs"], _f(r.get("train_minutes"), 2), overhead])
    lines += _table(["method", *metrics, "seeds", "train min (GPU)", "step overhead"], body)
    if (folder / "weighting.png").exists():
        lines += ["", f"![weighting]({_copy(folder / 'weighting.png', assets, 'weighting.png')})"]
    _copy(folder / "weighting.csv", assets, "weighting.csv")
    lines += ["", f"Command: `{COMMANDS['weighting']}`", ""]
    return lines


def affinity_section(folders: Sequence[Path], assets: Path) -> list[str]:
    files = sorted(p for f in folders for p in f.glob("*/logs/task_affinity.json"))
    if not files:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["## Task affinity (every bundle)", ""]
    lines += [
        "Measured during training by `common.handlers.TaskAffinity`: inter-task affinity (TAG one-step lookahead, "
        "Fifty et al. 2021: the relative drop of task j's loss after a step on task i's loss alone, row i -> column "
        "j, in %) and the cosine between the tasks' gradients on the shared parameters, averaged over the run.",
        "",
    ]
    fig, axes = plt.subplots(1, len(files), figsize=(3.6 * len(files), 3.4), squeeze=False)
    for ax, path in zip(axes.flat, files):
        bundle = path.parents[1].name
        data = json.loads(path.read_text())
        tasks, aff, cos = data["tasks"], data["affinity"], data["gradient_cosine"]
        where = "GPU" if "gpu" in path.parts else "CPU"
        source = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        lines += [f"**{bundle}** ({data.get('measurements', '?')} measurements, {where} run; `{source}`)", ""]
        head = ["step on \\ affinity to", *tasks, "gradient cosine with", *tasks]
        body = [[t, *(_f(100 * a, 4) for a in aff[i]), "", *(_f(c, 3) for c in cos[i])] for i, t in enumerate(tasks)]
        lines += [*_table(head, body), ""]
        off = [[100 * aff[i][j] if i != j else math.nan for j in range(len(tasks))] for i in range(len(tasks))]
        im = ax.imshow(off, cmap="coolwarm")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        ax.set_title(f"{bundle}: affinity % (row -> column)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    assets.mkdir(parents=True, exist_ok=True)
    fig.savefig(assets / "affinity.png", dpi=110)
    plt.close(fig)
    lines += ["![task affinity](results/affinity.png)", "", f"Command: `{COMMANDS['affinity']}`", ""]
    return lines


#: The page's sections in order: name -> the start of its heading (how an existing page's section is recognised).
SECTIONS = {
    "paired": "## Is multi-task better?",
    "cost": "## 1. Cost",
    "speed": "## Speed switches",
    "quality": "## 2. Quality",
    "scarcity": "## 3. Data scarcity",
    "weighting": "## 4. Loss-weighting",
    "affinity": "## Task affinity",
}


def split_sections(page: str) -> dict[str, list[str]]:
    """The sections of an existing page by name (:data:`SECTIONS`), each as its lines; unknown sections are kept
    under their heading line."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in page.splitlines():
        if line.startswith("## "):
            current = next((n for n, head in SECTIONS.items() if line.startswith(head)), line)
            blocks[current] = []
        if current is not None:
            blocks[current].append(line)
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cost", default=str(REPO / "benchmarks/results/cpu/cost"))
    parser.add_argument("--speed", default=str(REPO / "benchmarks/results/gpu/speed"))
    parser.add_argument("--quality", default=str(REPO / "benchmarks/results/gpu/quality"))
    parser.add_argument("--paired", default=None, help="folder of paired.csv (default: the --quality folder)")
    parser.add_argument("--scarcity", default=str(REPO / "benchmarks/results/gpu/scarcity"))
    parser.add_argument("--weighting", default=str(REPO / "benchmarks/results/gpu/weighting"))
    parser.add_argument("--affinity", nargs="*", default=[str(REPO / "benchmarks/results/gpu/affinity"),
                                                          str(REPO / "benchmarks/results/cpu/affinity")])  # fmt: skip
    parser.add_argument("--preamble", default=str(REPO / "benchmarks/results_preamble.md"),
                        help="markdown put at the top of the page (context, devices, caveats)")  # fmt: skip
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=None,
                        help="rebuild only these sections and keep the others as they are in --out (e.g. paired, "
                             "when the other sections' run folders are on another machine)")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "docs/results.md"))
    args = parser.parse_args()
    out = Path(args.out)
    assets = out.parent / "results"
    builders = {
        "paired": lambda: paired_section(Path(args.paired or args.quality), assets),
        "cost": lambda: cost_section(Path(args.cost), assets),
        "speed": lambda: speed_section(Path(args.speed), assets),
        "quality": lambda: comparison_section(
            "## 2. Quality at equal budget",
            "Each bundle's multi-task model vs the single-task model of each task, all trained with the bundle's "
            "`train.json` defaults on the same patient-level split; mean [95% CI, Student's t over seeds] on the "
            "test split. With 3 seeds an interval can pass a metric's range (e.g. AUC > 1): it is shown as computed.",
            Path(args.quality), "quality", assets,
        ),  # fmt: skip
        "scarcity": lambda: comparison_section(
            "## 3. Data scarcity",
            "The same comparison with 10%, 25%, 50% and 100% of the training labels (same test split).",
            Path(args.scarcity), "scarcity", assets,
        ),  # fmt: skip
        "weighting": lambda: weighting_section(Path(args.weighting), assets),
        "affinity": lambda: affinity_section([Path(a) for a in args.affinity], assets),
    }
    kept = split_sections(out.read_text()) if args.sections and out.exists() else {}
    lines = ["# Results: multi-task vs single-task, measured", ""]
    lines += ["<!-- generated by `python -m benchmarks.results_page`; edit benchmarks/results_preamble.md -->", ""]
    if Path(args.preamble).exists():
        lines += [Path(args.preamble).read_text().strip(), ""]
    for name, build in builders.items():
        if args.sections is None or name in args.sections:
            lines += build()
        elif name in kept:
            lines += [*kept[name], ""] if kept[name][-1].strip() else kept[name]
    lines += [line for name, block in kept.items() if name not in SECTIONS for line in block]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
