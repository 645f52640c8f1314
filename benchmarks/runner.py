"""Train and evaluate bundle runs through the monai.bundle CLI, several at once, and collect their results.

Each run lives in its own folder (``<out>/<strategy>_frac<f>_seed<s>[_fold<k>][_<tag>]``) holding the bundle's
models, logs, ``eval/metrics.json``, ``eval/per_case.csv`` and ``run.json`` (what was run, how long it took). A run
whose ``run.json`` exists is not repeated, so an interrupted benchmark resumes; the CSV is rebuilt from the run
folders.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.specs import REPO, BundleSpec


def run_config(bundle: str, config: str | Sequence[str], overrides: dict[str, str], log: Path) -> float:
    """Run one bundle config (or several merged, later ones overriding) through ``python -m monai.bundle run``;
    return its wall time in seconds.

    Raises:
        RuntimeError: the run failed (the message names its log).
    """
    cfg_dir = REPO / "bundles" / bundle / "configs"
    files = [str(cfg_dir / c) for c in ([config] if isinstance(config, str) else config)]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--meta_file", str(cfg_dir / "metadata.json"),
    ]  # fmt: skip
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.time() - start


@dataclass
class Run:
    """One training + evaluation run of a bundle strategy."""

    spec: BundleSpec
    strategy: str
    seed: int = 0
    fraction: float = 1.0
    dataset_dir: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    tag: str = ""
    fold: int | None = None
    num_folds: int = 0

    def folder(self, out: Path) -> Path:
        return out / run_folder_name(self.strategy, self.fraction, self.seed, self.tag, self.fold)


def run_folder_name(strategy: str, fraction: float, seed: int, tag: str = "", fold: int | None = None) -> str:
    """The folder name of a run (see the module docstring)."""
    name = f"{strategy}_frac{float(fraction):g}_seed{seed}"
    if fold is not None and fold != "":
        name += f"_fold{fold}"
    return f"{name}_{tag}" if tag else name


def execute(run: Run, out: Path) -> dict:
    """Train then evaluate ``run`` on the test split; write and return its ``run.json`` record."""
    root = run.folder(out)
    record_file = root / "run.json"
    if record_file.exists():
        return json.loads(record_file.read_text())
    spec = run.spec
    strategy = spec.strategy_overrides(run.strategy)
    root.mkdir(parents=True, exist_ok=True)
    shared = {
        "dataset_dir": run.dataset_dir or str(spec.default_dataset_dir),
        "bundle_root": str(root),
        "seed": str(run.seed),
        "split_seed": "0",  # one split for every seed: seeds vary the training run only
        **({"fold": str(run.fold), "num_folds": str(run.num_folds)} if run.fold is not None else {}),
        **spec.overrides,
        **strategy,
        **run.overrides,
    }
    t_train = run_config(
        spec.name,
        ["train.json", *spec.extra_configs],
        {**shared, "train_fraction": str(run.fraction), "resume": "False", "progress_bar": "False"},
        root / "train.log",
    )
    t_eval = run_config(
        spec.name,
        ["train.json", "evaluate.json", *spec.extra_configs],
        {**shared, "eval_split": "test", "output_dir": str(root / "eval")},
        root / "evaluate.log",
    )
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    n = metrics.get("n_cases") or metrics.get("n_images") or metrics.get("n_slices") or 1
    record = {
        "bundle": spec.name,
        "strategy": run.strategy,
        "tag": run.tag,
        "seed": run.seed,
        "train_fraction": run.fraction,
        **({"fold": run.fold, "num_folds": run.num_folds} if run.fold is not None else {}),
        "train_minutes": round(t_train / 60, 2),
        "eval_seconds_per_case": round(t_eval / n, 3),
        "overrides": " ".join(f"{k}={v}" for k, v in {**strategy, **run.overrides}.items()),
        **metrics,
    }
    record_file.write_text(json.dumps(record, indent=2))
    return record


def execute_all(runs: Sequence[Run], out: Path, parallel: int = 1) -> list[dict]:
    """Execute ``runs`` with at most ``parallel`` at once; failures are reported and skipped, not fatal."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}.")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(execute, r, out): r for r in runs}
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                records.append(fut.result())
                print(f"done {r.folder(out).name}", flush=True)
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                print(f"FAILED {r.folder(out).name}: {e}", file=sys.stderr, flush=True)
    return records


def collect(out: Path) -> list[dict]:
    """Every ``run.json`` under ``out``, sorted by strategy, tag, fraction, seed, fold."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/run.json"))]
    return sorted(
        records, key=lambda r: (r["strategy"], r.get("tag", ""), r["train_fraction"], r["seed"], r.get("fold", -1))
    )


def write_csv(records: Sequence[dict], path: Path) -> None:
    """Write ``records`` as a CSV with the union of their keys (first-seen order)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
