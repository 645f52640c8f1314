"""The speed switches of every bundle (``precision``, ``memory_format``, ``ema_decay`` in ``train.json``) against plain
fp32: training samples per second and inference seconds per case, on the same batch, as ratios.

For each bundle, one trainer per variant is built from the bundle's own ``train.json`` with the variant's overrides
(the same seed, so the same initial weights); one training batch is drawn once and one validation case is
preprocessed once. Then, ``--warmup`` + ``--steps`` rounds, each timing one step of every variant in turn
(interleaved, so a busy machine slows all variants alike):

- training step: the bundle trainer's own iteration (autocast forward, float32 losses, weighting backward,
  optimiser step; plus the EMA update for an EMA variant);
- inference: the bundle's validation inferer (``validate#inferer``, the one ``evaluate.json`` uses) on the one
  case, network in eval mode, without gradients.

Medians over the timed rounds; ``train_speedup`` = fp32 step time / variant step time (> 1: faster), likewise
``inference_speedup``. Peak memory: on a GPU, a step's ``torch.cuda.max_memory_allocated`` above the memory held
before it (activations and temporaries; the variants' weights are all resident); on the CPU, with
``--memory``, the peak resident set (``ru_maxrss``) of a child process that runs a few steps of that variant alone.

    python -m benchmarks.speed                                   # all bundles, ../shared/data, CPU, 1 thread
    python -m benchmarks.speed --device cuda:0 --steps 30 --out benchmarks/results/gpu/speed

A variant the bundle's settings refuse (``fp16`` with a weighting that loss scaling would change, e.g. ``uw``) is
skipped with a printed note. Writes ``<out>/speed.csv`` (one row per bundle and variant), ``<out>/speed.png`` and
``<out>/commands.txt`` (the command lines, for the results page); the rows of bundles not named in ``--bundles`` that
an earlier run left in ``<out>/speed.csv`` are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate

from benchmarks.cost import _split, _sync, configured_parser
from benchmarks.quality import command_line, parse_overrides, record_command
from benchmarks.runner import write_csv
from benchmarks.specs import REPO, SPECS, BundleSpec, get_spec
from common.errors import SettingsError

#: variant name -> train.json overrides; the first is the reference.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "memory_format": "contiguous", "ema_decay": 0.0},
    "bf16": {"precision": "bf16", "memory_format": "contiguous", "ema_decay": 0.0},
    "channels_last": {"precision": "fp32", "memory_format": "channels_last", "ema_decay": 0.0},
    "bf16+channels_last": {"precision": "bf16", "memory_format": "channels_last", "ema_decay": 0.0},
    "fp16": {"precision": "fp16", "memory_format": "contiguous", "ema_decay": 0.0},
    "ema": {"precision": "fp32", "memory_format": "contiguous", "ema_decay": 0.999},
}
#: variants measured by default on each device type (fp16 needs CUDA).
DEFAULT_VARIANTS = {
    "cpu": ["fp32", "bf16", "channels_last", "bf16+channels_last", "ema"],
    "cuda": ["fp32", "bf16", "fp16", "channels_last", "bf16+channels_last", "ema"],
}


class _Variant:
    """One variant's trainer, inferer, EMA handler and the shared inputs, built from the bundle's config."""

    def __init__(self, spec: BundleSpec, name: str, dataset_dir: str, root: str, overrides: dict, device: str):
        if name not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got '{name}'.")
        parser = configured_parser(spec, dataset_dir, root, device, overrides, VARIANTS[name])
        self.name, self.parser = name, parser
        self.trainer = parser.get_parsed_content("train#trainer")
        self.ema = parser.get_parsed_content("ema_weights")
        self.inferer = parser.get_parsed_content("validate#inferer")
        self.device = self.trainer.state.device
        self.trainer.active_tasks = list(self.trainer.phases[-1]["tasks"])

    def draw_inputs(self) -> tuple[Any, Any]:
        """One training batch and one preprocessed validation case (batch of 1)."""
        batch = next(iter(self.parser.get_parsed_content("train#dataloader")), None)
        if batch is None:
            raise ValueError("the training data loader yields no batch: use more training cases (train_fraction).")
        record = self.parser.get_parsed_content("validate#dataset#data")[0]  # without building the dataset
        item = self.parser.get_parsed_content("validate#preprocessing")(record)
        case = list_data_collate(item if isinstance(item, list) else [item])
        return batch, case

    def train_step(self, batch: Any) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.trainer._iteration(self.trainer, batch)
        if self.ema.enabled:
            self.ema.update()
        _sync(self.device)
        return time.perf_counter() - t0

    def infer_case(self, case: Any) -> float:
        inputs, _, args, kwargs = _split(self.trainer.prepare_batch(case, self.device, False))
        self.trainer.network.eval()
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            self.inferer(inputs, self.trainer.network, *args, **kwargs)
        _sync(self.device)
        return time.perf_counter() - t0


def _settings_error(err: BaseException | None) -> SettingsError | None:
    """The SettingsError behind ``err`` (MONAI's config parser wraps it in RuntimeError), or None."""
    while err is not None and not isinstance(err, SettingsError):
        err = err.__cause__ or err.__context__
    return err


def measure_speed(
    spec: BundleSpec,
    dataset_dir: str,
    variants: Sequence[str],
    overrides: dict[str, str],
    device: str,
    steps: int,
    warmup: int,
) -> list[dict]:
    """Median training step and inference time of each variant, interleaved (see module doc); one row each.

    Raises:
        ValueError: no variant, or an unknown one.
    """
    if not variants:
        raise ValueError("variants must name at least one variant.")
    with tempfile.TemporaryDirectory() as root:
        built = []
        for i, name in enumerate(variants):
            try:
                built.append(_Variant(spec, name, dataset_dir, root, overrides, device))
            except (SettingsError, RuntimeError) as err:  # e.g. fp16 with a weighting loss scaling would change
                refused = _settings_error(err)
                if i == 0 or refused is None:
                    raise
                print(f"{spec.name}: variant '{name}' skipped: {refused}", flush=True)
        batch, case = built[0].draw_inputs()
        train: dict[str, list[float]] = {v.name: [] for v in built}
        infer: dict[str, list[float]] = {v.name: [] for v in built}
        peak: dict[str, int] = {v.name: 0 for v in built}
        cuda = built[0].device.type == "cuda"
        for i in range(warmup + steps):
            for v in built:
                if cuda:  # the step's own peak above what every built variant holds between steps
                    torch.cuda.reset_peak_memory_stats(v.device)
                    held = torch.cuda.memory_allocated(v.device)
                t_train = v.train_step(batch)
                t_infer = v.infer_case(case)
                if cuda:
                    peak[v.name] = max(peak[v.name], torch.cuda.max_memory_allocated(v.device) - held)
                if i >= warmup:
                    train[v.name].append(t_train)
                    infer[v.name].append(t_infer)
        inputs = _split(built[0].trainer.prepare_batch(batch, built[0].device, False))[0]
        case_inputs = _split(built[0].trainer.prepare_batch(case, built[0].device, False))[0]
    ref = built[0].name
    rows = []
    for v in built:
        tr, inf = statistics.median(train[v.name]), statistics.median(infer[v.name])
        rows.append(
            {
                "bundle": spec.name,
                "variant": v.name,
                **{k: VARIANTS[v.name][k] for k in ("precision", "memory_format", "ema_decay")},
                "tasks": " ".join(v.trainer.active_tasks),
                "batch_size": int(inputs.shape[0]),
                "input_shape": "x".join(str(s) for s in inputs.shape[1:]),
                "case_shape": "x".join(str(s) for s in case_inputs.shape[1:]),
                "train_step_s": round(tr, 5),
                "samples_per_s": round(int(inputs.shape[0]) / tr, 2),
                "inference_s_per_case": round(inf, 5),
                "train_speedup": round(statistics.median(train[ref]) / tr, 3),
                "inference_speedup": round(statistics.median(infer[ref]) / inf, 3),
                "reference": ref,
                "peak_memory_mb": round(peak[v.name] / 2**20, 1) if cuda else "",
                "memory_kind": "cuda step peak above held (max_memory_allocated)" if cuda else "",
                "device": device,
                "threads": torch.get_num_threads(),
                "steps": steps,
            }
        )
    return rows


def child_peak_rss(bundle: str, variant: str, dataset_dir: str, overrides: Sequence[str], threads: int) -> float:
    """Peak resident set (MiB) of a child process running 2 training steps and 1 inference of one variant."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--bundles", bundle, "--dataset_dir", dataset_dir,
           "--variants", variant, "--threads", str(threads), "--_child", "--override", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child of {bundle}/{variant} failed:\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` plus the rows of the other bundles already in ``path`` (an earlier run of the same ``--out``), in
    the bundles' order: re-measuring one bundle keeps the others' rows."""
    measured = {r["bundle"] for r in rows}
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = list(csv.DictReader(f))
    merged = [r for r in kept if r["bundle"] not in measured] + rows
    order = list(SPECS)
    return sorted(merged, key=lambda r: order.index(r["bundle"]) if r["bundle"] in order else len(order))


def plot_speed(rows: Sequence[dict], path: Path) -> None:
    """Grouped bars of the training and inference speed-ups of each variant per bundle (1 = plain fp32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bundles = list(dict.fromkeys(r["bundle"] for r in rows))
    fig, axes = plt.subplots(1, len(bundles), figsize=(max(5.0, 0.8 + 3.2 * len(bundles)), 3.6), squeeze=False)
    for ax, bundle in zip(axes[0], bundles):
        mine = [r for r in rows if r["bundle"] == bundle and r["variant"] != r["reference"]]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [float(r["train_speedup"]) for r in mine], 0.4, label="training samples/s")
        ax.bar([i + 0.2 for i in x], [float(r["inference_speedup"]) for r in mine], 0.4, label="inference")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xticks(list(x), [r["variant"] for r in mine], rotation=30, ha="right", fontsize=7)
        ax.set_title(bundle, fontsize=9)
    axes[0][0].set_ylabel("speed-up vs fp32 (>1: faster)")
    axes[0][0].legend(fontsize=7)
    where = f"{rows[0]['device']}, {rows[0]['threads']} thread(s)"
    fig.suptitle(f"Speed switches vs plain fp32\n({where}; median of {rows[0]['steps']} interleaved steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="data set folder (one bundle only; default: its ../shared/data set)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="variants; the first is the reference")
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides (e.g. batch_size=8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="CPU: peak resident memory of each variant in a child process")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cpu/speed"))
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dataset_dir and len(args.bundles) != 1:
        raise SystemExit("--dataset_dir needs exactly one bundle in --bundles")
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.override)
    device_type = torch.device(args.device).type
    variants = args.variants or DEFAULT_VARIANTS.get(device_type, ["fp32", "bf16"])
    if args._child:
        spec = get_spec(args.bundles[0])
        measure_speed(spec, args.dataset_dir, variants, overrides, args.device, steps=2, warmup=0)
        print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    out = Path(args.out)
    rows = []
    for bundle in args.bundles:
        spec = get_spec(bundle)
        data = args.dataset_dir or str(spec.default_dataset_dir)
        if not Path(data).is_dir():
            raise SystemExit(f"{bundle}: data set folder {data} not found (give --dataset_dir)")
        bundle_rows = measure_speed(spec, data, variants, overrides, args.device, args.steps, args.warmup)
        if device_type == "cpu" and args.memory:
            for r in bundle_rows:
                r["peak_memory_mb"] = round(child_peak_rss(bundle, r["variant"], data, args.override, args.threads), 1)
                r["memory_kind"] = "child process ru_maxrss"
        for r in bundle_rows:
            print(r, flush=True)
        rows += bundle_rows
    rows = merge_rows(out / "speed.csv", rows)
    write_csv(rows, out / "speed.csv")
    plot_speed(rows, out / "speed.png")
    record_command(out, command_line("benchmarks.speed"))
    print(f"wrote {out / 'speed.csv'} and speed.png")


if __name__ == "__main__":
    main()
