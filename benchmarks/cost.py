"""Question 1: cost. For each bundle, the multi-task model's training step time, inference time and parameter count
against the sum of its single-task models', on the same batch, reported as ratios.

Each strategy's network, loss, weighting and trainer are built from the bundle's own ``train.json`` (with the
strategy's overrides), one training batch is drawn from its data loader, and then:

- training step: the bundle trainer's own iteration (forward, per-task losses of the strategy's tasks, weighting
  backward, optimiser step) on that batch, median of ``--steps`` timed steps after ``--warmup``;
- inference: the network's forward pass on the same batch in eval mode without gradients, with the single-task
  model's inactive heads switched off exactly as in its training, and auxiliary tasks (brats_mtl's masked image
  modelling) off as in the deployed ``inference.json`` (median of ``--steps``);
- parameters: those that receive a gradient in the strategy's training step (an unused head does not count).

    python -m benchmarks.cost                      # all bundles on their ../shared/data sets, CPU, 1 thread
    python -m benchmarks.cost --bundles fundus_glaucoma --device cuda:0

Writes ``<out>/cost.csv`` (one row per bundle and strategy, plus a ``ratio`` row per bundle: multi-task / sum of
single-task) and ``<out>/cost.png``. Issue target: training <= 0.6x and inference <= 0.55x.

Two further measurements of one bundle:

- ``--throughput``: training samples per second of every phase of each strategy (e.g. brats_mtl's
  ``pretrain_finetune`` pre-trains on MIM alone, then fine-tunes the classifier), the same timed training step as
  above, and each step time relative to the first strategy's; writes ``<out>/throughput.csv``::

    python -m benchmarks.cost --bundles brats_mtl --throughput --strategies stl mtl pretrain_finetune \\
        --threads 2 --steps 20 --warmup 3

- ``--inference_time``: seconds per case of the bundle's deployed ``inference.json`` on a trained run
  (``--bundle_root``) over one split of a data set (default: the test cases of the bundle's own split), from the
  evaluator's own run time (loading, preprocessing, inference, post-processing and writing the outputs; process
  start-up and model construction excluded), and the whole command's wall time; appends a row to
  ``<out>/inference_time.csv``::

    python -m benchmarks.cost --bundles glioma_seg_idh --inference_time --dataset_dir ../shared/data/lgg \\
        --bundle_root benchmarks/results/quality/glioma_seg_idh/mtl_frac1_seed0 --threads 2

- ``--weighting_overhead``: training step time of gradient methods on a small 2-D multi-task U-Net
  (``UNetSegClassifier``, three losses: two segmentation channels and the classifier; synthetic batch, no bundle
  or data), one backward per task against TorchJD's autogram Gramian (``use_autogram``), relative to equal
  weighting's single backward; writes ``<out>/weighting_overhead.csv``::

    OMP_NUM_THREADS=1 python -m benchmarks.cost --weighting_overhead --size 64 --steps 10 --warmup 2
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks.quality import parse_overrides
from benchmarks.runner import run_config, write_csv
from benchmarks.specs import REPO, SPECS, BundleSpec, get_spec

TRAIN_TARGET, INFER_TARGET = 0.6, 0.55


def measure_weighting_overhead(
    methods: Sequence[str], size: int, batch: int, device: str, steps: int, warmup: int
) -> list[dict]:
    """Median step time (forward, ``weighting.backward``, SGD step) of each method, with and without autogram."""
    from torch import nn

    from common.networks import UNetSegClassifier
    from common.weighting import WEIGHTINGS, AggregatorWeighting, get_weighting

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen).to(dev)
    seg_t = (torch.rand(batch, 2, size, size, generator=gen) > 0.5).float().to(dev)
    cls_t = (torch.rand(batch, 1, generator=gen) > 0.5).float().to(dev)
    bce = nn.BCEWithLogitsLoss()
    tasks = ["seg_a", "seg_b", "cls"]
    rows: list[dict] = []
    for method in methods:
        variants = [False]
        if isinstance(WEIGHTINGS[method], type) and issubclass(WEIGHTINGS[method], AggregatorWeighting):
            variants.append(True)
        for autogram in variants:
            torch.manual_seed(0)
            net = UNetSegClassifier(1, 2, 1, features=(8, 16, 32, 64), act=("LeakyReLU", {"negative_slope": 0.1}))
            net = net.to(dev)
            w = get_weighting(method, tasks, **({"use_autogram": True} if autogram else {})).to(dev)
            w.attach(net)
            opt = torch.optim.SGD(list(net.parameters()) + list(w.parameters()), lr=1e-3)
            times = []
            for i in range(warmup + steps):
                _sync(dev)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                out = net(x)
                seg, cls = out[net.seg_task], out[net.cls_task]
                losses = {"seg_a": bce(seg[:, 0], seg_t[:, 0]), "seg_b": bce(seg[:, 1], seg_t[:, 1]),
                          "cls": bce(cls, cls_t)}
                w.backward(losses, list(net.shared_parameters()))
                opt.step()
                _sync(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            rows.append({"method": method, "autogram": autogram, "step_s": statistics.median(times)})
    base = next((r["step_s"] for r in rows if r["method"] == "ew"), None)
    for r in rows:
        r["vs_ew"] = round(r["step_s"] / base, 3) if base else ""
        r["step_s"] = round(r["step_s"], 4)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_parser(spec: BundleSpec) -> ConfigParser:
    """The bundle's ``train.json`` with its spec's extra configs merged after it, and its metadata."""
    cfg = REPO / "bundles" / spec.name / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), *(str(cfg / c) for c in spec.extra_configs)])
    parser.read_meta(str(cfg / "metadata.json"))
    return parser


def configured_parser(spec: BundleSpec, dataset_dir: str, root: str, device: str, *overrides: dict) -> ConfigParser:
    """:func:`_train_parser` set up for an in-process measurement: the data set, a scratch ``bundle_root``, the
    device, no loader workers, then the spec's overrides and ``overrides`` (later ones win); torch seeded."""
    parser = _train_parser(spec)
    values = {
        "dataset_dir": dataset_dir,
        "bundle_root": root,
        "device": f"$torch.device('{device}')",
        "num_workers": "0",
        **spec.overrides,
    }
    for extra in overrides:
        values.update(extra)
    for k, v in values.items():
        parser[k] = _literal(v)
    torch.manual_seed(0)
    return parser


def measure_strategy(
    spec: BundleSpec,
    strategy: str,
    dataset_dir: str,
    overrides: dict[str, str],
    device: str,
    steps: int,
    warmup: int,
    phase: int = -1,
) -> dict:
    """Training-step seconds, inference seconds and used parameters of one strategy's model (see module doc).

    ``phase`` picks the phase of the strategy's training schedule whose tasks are trained (default: the last, the
    tasks the final model is for); the row's ``phase`` is its 0-based index and ``n_phases`` the schedule's length.

    Raises:
        ValueError: ``phase`` is not a phase of the strategy's schedule.
    """
    with tempfile.TemporaryDirectory() as root:
        parser = configured_parser(spec, dataset_dir, root, device, spec.strategy_overrides(strategy), overrides)
        trainer = parser.get_parsed_content("train#trainer")
        loader = parser.get_parsed_content("train#dataloader")
        batch = next(iter(loader))
        n_phases = len(trainer.phases)
        if not -n_phases <= phase < n_phases:
            raise ValueError(f"phase must index the {n_phases} phase(s) of strategy '{strategy}', got {phase}.")
        trainer.active_tasks = list(trainer.phases[phase]["tasks"])  # by default the task(s) of the final model
        dev = trainer.state.device

        times = []
        for i in range(warmup + steps):
            _sync(dev)
            t0 = time.perf_counter()
            trainer._iteration(trainer, batch)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        params = sum(p.numel() for p in trainer.network.parameters() if p.grad is not None)

        inputs, _, args, kwargs = _split(trainer.prepare_batch(batch, dev, False))
        kwargs = dict(kwargs)
        for task, off in trainer.inactive_task_kwargs.items():
            if task not in trainer.active_tasks or task in spec.auxiliary_tasks:
                kwargs.update(off)
        trainer.network.eval()
        infer = []
        with torch.no_grad():
            for i in range(warmup + steps):
                _sync(dev)
                t0 = time.perf_counter()
                trainer.network(inputs, *args, **kwargs)
                _sync(dev)
                if i >= warmup:
                    infer.append(time.perf_counter() - t0)
    return {
        "bundle": spec.name,
        "strategy": strategy,
        "tasks": " ".join(trainer.active_tasks),
        "batch_size": int(inputs.shape[0]),
        "input_shape": "x".join(str(s) for s in inputs.shape[1:]),
        "train_step_s": statistics.median(times),
        "inference_s": statistics.median(infer),
        "parameters": params,
        "device": device,
        "threads": torch.get_num_threads(),
        "phase": phase % n_phases,
        "n_phases": n_phases,
    }


def measure_throughput(
    spec: BundleSpec,
    strategies: Sequence[str],
    dataset_dir: str,
    overrides: dict[str, str],
    device: str,
    steps: int,
    warmup: int,
) -> list[dict]:
    """Training samples per second of every phase of each strategy (the training step of :func:`measure_strategy`),
    with ``step_time_ratio``: the step time over that of the first strategy's last phase.

    Raises:
        ValueError: ``strategies`` is empty.
    """
    if not strategies:
        raise ValueError("strategies must name at least one strategy.")
    rows = []
    for strategy in strategies:
        first = measure_strategy(spec, strategy, dataset_dir, overrides, device, steps, warmup, phase=0)
        phases = [first] + [
            measure_strategy(spec, strategy, dataset_dir, overrides, device, steps, warmup, phase=i)
            for i in range(1, first["n_phases"])
        ]
        rows += phases
    reference = next(r for r in rows if r["strategy"] == strategies[0] and r["phase"] == r["n_phases"] - 1)
    out = []
    for r in rows:
        out.append(
            {
                "bundle": r["bundle"],
                "strategy": r["strategy"],
                "phase": f"{r['phase'] + 1}/{r['n_phases']}",
                "tasks": r["tasks"],
                "batch_size": r["batch_size"],
                "input_shape": r["input_shape"],
                "median_step_s": round(r["train_step_s"], 4),
                "samples_per_s": round(r["batch_size"] / r["train_step_s"], 1),
                "step_time_ratio": round(r["train_step_s"] / reference["train_step_s"], 2),
                "reference": reference["strategy"],
                "parameters": r["parameters"],
                "device": r["device"],
                "threads": r["threads"],
            }
        )
    return out


_ENGINE_TIME = re.compile(r"Engine run finished\. Time taken: (\d+):(\d+):(\d+(?:\.\d+)?)")


def engine_seconds(log: str) -> float:
    """Seconds of every ignite ``Engine run finished. Time taken: H:MM:SS.sss`` line of a log, summed (NaN if
    none)."""
    found = _ENGINE_TIME.findall(log)
    if not found:
        return float("nan")
    return sum(int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in found)


def link_split(spec: BundleSpec, dataset_dir: str, split: str, overrides: dict[str, str], target: Path) -> list[dict]:
    """Link the input images of one split of the bundle's own data split (``train.json``'s datalist, fractions and
    ``split_seed``) into ``target``, at their paths relative to ``dataset_dir``; return the split's records.

    Raises:
        ValueError: the split is empty, or an image lies outside ``dataset_dir``.
    """
    from common.data import select_split

    parser = _train_parser(spec)
    for k, v in {"dataset_dir": dataset_dir, **spec.overrides, **overrides}.items():
        parser[k] = _literal(v)
    split_key = parser.get_parsed_content("split_key") if "split_key" in parser else None
    records = select_split(
        parser.get_parsed_content("datalist"),
        split,
        parser.get_parsed_content("val_fraction"),
        parser.get_parsed_content("test_fraction"),
        parser.get_parsed_content("split_seed"),
        split_key=split_key,
    )
    if not records:
        raise ValueError(f"split '{split}' of {dataset_dir} holds no case.")
    base = Path(dataset_dir).resolve()
    for r in records:
        images = r["image"] if isinstance(r["image"], (list, tuple)) else [r["image"]]
        for image in images:
            source = Path(image).resolve()
            if not source.is_relative_to(base):
                raise ValueError(f"image {image} is not inside dataset_dir {dataset_dir}.")
            link = target / source.relative_to(base)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
    return records


def measure_inference_time(
    spec: BundleSpec, dataset_dir: str, bundle_root: str, split: str, overrides: dict[str, str], log: Path
) -> dict:
    """Seconds per case of the bundle's ``inference.json`` (with the spec's extra configs) on the trained model in
    ``bundle_root``, over the cases of one split of ``dataset_dir`` (see module doc); ``log`` keeps its output."""
    if not (Path(bundle_root) / "models").is_dir():
        raise ValueError(f"bundle_root must hold a trained run's models/ folder, got '{bundle_root}'.")
    with tempfile.TemporaryDirectory() as tmp:
        cases = Path(tmp) / "cases"
        records = link_split(spec, dataset_dir, split, overrides, cases)
        values = {
            "dataset_dir": str(cases),
            "bundle_root": str(Path(bundle_root).resolve()),
            "output_dir": str(Path(tmp) / "predictions"),
            **spec.overrides,
            **overrides,
        }
        log.parent.mkdir(parents=True, exist_ok=True)
        wall = run_config(spec.name, ["inference.json", *spec.extra_configs], values, log)
    engine = engine_seconds(log.read_text())
    n = len({r.get("case", i) for i, r in enumerate(records)})
    return {
        "bundle": spec.name,
        "dataset": Path(dataset_dir).name,
        "split": split,
        "n_cases": n,
        "n_inputs": len(records),
        "engine_seconds": round(engine, 2),
        "seconds_per_case": round(engine / n, 2),
        "seconds_per_input": round(engine / len(records), 2),
        "command_wall_seconds": round(wall, 1),
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()),
    }


def _literal(value: str):
    """A CLI-style override value as the config value it stands for (numbers, booleans, lists stay typed)."""
    import ast

    if isinstance(value, str) and not value.startswith(("$", "@", "%")):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _split(batch) -> tuple:
    return batch if len(batch) == 4 else (*batch, (), {})


def ratio_row(spec: BundleSpec, rows: list[dict]) -> dict:
    """Multi-task over the sum of the single-task models, for step time, inference time and parameters."""
    by = {r["strategy"]: r for r in rows}
    mtl, stl = by[spec.mtl], [by[s] for s in dict.fromkeys(spec.single_task.values())]
    out = {
        "bundle": spec.name,
        "strategy": "ratio",
        "tasks": f"{spec.mtl} / ({' + '.join(r['strategy'] for r in stl)})",
    }
    for key in ("train_step_s", "inference_s", "parameters"):
        out[key] = mtl[key] / sum(r[key] for r in stl)
    out["train_target_met"] = out["train_step_s"] <= TRAIN_TARGET
    out["inference_target_met"] = out["inference_s"] <= INFER_TARGET
    out["device"], out["threads"] = mtl["device"], mtl["threads"]
    return out


def plot_cost(ratios: list[dict], path: Path) -> None:
    """Grouped bars of the three ratios per bundle, with the issue's targets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(ratios), 3.4))
    keys = [("train_step_s", "training step"), ("inference_s", "inference"), ("parameters", "parameters")]
    width = 0.25
    for j, (key, label) in enumerate(keys):
        ax.bar([i + (j - 1) * width for i in range(len(ratios))], [r[key] for r in ratios], width, label=label)
    ax.axhline(TRAIN_TARGET, ls="--", color="tab:blue", lw=1)
    ax.axhline(INFER_TARGET, ls=":", color="tab:orange", lw=1)
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xticks(range(len(ratios)), [r["bundle"] for r in ratios], fontsize=8)
    ax.set_ylabel("multi-task / sum of single-task")
    where = f"{ratios[0]['device']}, {ratios[0]['threads']} thread(s)"
    ax.set_title(f"Cost ratios ({where}); targets {TRAIN_TARGET} / {INFER_TARGET}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _append_csv(row: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="data set folder (one bundle only; default: its ../shared/data set)")
    parser.add_argument(
        "--strategies", nargs="+", help="strategies to measure (default: the multi-task and single-task ones)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides (e.g. batch_size=8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (inference time: OMP_NUM_THREADS)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cost"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--throughput", action="store_true", help="training samples/s per strategy and phase")
    mode.add_argument(
        "--inference_time", "--inference-time", action="store_true", help="inference.json seconds per case"
    )
    mode.add_argument(
        "--weighting_overhead", action="store_true", help="gradient methods' step time, autogram vs per-task"
    )
    parser.add_argument(
        "--methods", nargs="+", default=["ew", "mgda", "imtl_g", "pcgrad", "upgrad"], help="weighting overhead"
    )
    parser.add_argument("--size", type=int, default=64, help="weighting overhead: image size")
    parser.add_argument("--batch", type=int, default=4, help="weighting overhead: batch size")
    parser.add_argument("--bundle_root", help="inference time: the trained run folder (holds models/)")
    parser.add_argument("--split", default="test", help="inference time: the split whose cases are timed")
    args = parser.parse_args()
    if args.dataset_dir and len(args.bundles) != 1:
        raise SystemExit("--dataset_dir needs exactly one bundle in --bundles")
    if (args.throughput or args.inference_time) and len(args.bundles) != 1:
        raise SystemExit("--throughput and --inference_time measure exactly one bundle: give --bundles NAME")
    if args.inference_time and not args.bundle_root:
        raise SystemExit("--inference_time needs --bundle_root (a trained run folder)")
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.override)
    out = Path(args.out)
    if args.weighting_overhead:
        rows = measure_weighting_overhead(args.methods, args.size, args.batch, args.device, args.steps, args.warmup)
        for r in rows:
            print(r, flush=True)
        write_csv(rows, out / "weighting_overhead.csv")
        print(f"wrote {out / 'weighting_overhead.csv'}")
        return
    rows, ratios = [], []
    for bundle in args.bundles:
        spec = get_spec(bundle)
        data = args.dataset_dir or str(spec.default_dataset_dir)
        if not Path(data).is_dir():
            raise SystemExit(f"{bundle}: data set folder {data} not found (give --dataset_dir)")
        if args.inference_time:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the inference.json run is a child process
            row = measure_inference_time(
                spec, data, args.bundle_root, args.split, overrides, out / "inference_time.log"
            )
            _append_csv(row, out / "inference_time.csv")
            print(row, f"\nappended to {out / 'inference_time.csv'}", flush=True)
            return
        strategies = args.strategies or [spec.mtl, *dict.fromkeys(spec.single_task.values())]
        if args.throughput:
            rows = measure_throughput(spec, strategies, data, overrides, args.device, args.steps, args.warmup)
            for r in rows:
                print(r, flush=True)
            write_csv(rows, out / "throughput.csv")
            print(f"wrote {out / 'throughput.csv'}")
            return
        bundle_rows = [
            measure_strategy(spec, s, data, overrides, args.device, args.steps, args.warmup) for s in strategies
        ]
        for r in bundle_rows:
            print(r, flush=True)
        rows += bundle_rows
        if {spec.mtl, *spec.single_task.values()} <= set(strategies):
            ratios.append(ratio_row(spec, bundle_rows))
            print(ratios[-1], flush=True)
            rows.append(ratios[-1])
    write_csv(rows, out / "cost.csv")
    if ratios:
        plot_cost(ratios, out / "cost.png")
    print(f"wrote {out / 'cost.csv'}" + (" and cost.png" if ratios else ""))


if __name__ == "__main__":
    main()
