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
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks.quality import parse_overrides
from benchmarks.runner import write_csv
from benchmarks.specs import REPO, SPECS, BundleSpec, get_spec

TRAIN_TARGET, INFER_TARGET = 0.6, 0.55


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_strategy(
    spec: BundleSpec, strategy: str, dataset_dir: str, overrides: dict[str, str], device: str, steps: int, warmup: int
) -> dict:
    """Training-step seconds, inference seconds and used parameters of one strategy's model (see module doc)."""
    cfg = REPO / "bundles" / spec.name / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), *(str(cfg / c) for c in spec.extra_configs)])
    parser.read_meta(str(cfg / "metadata.json"))
    with tempfile.TemporaryDirectory() as root:
        values = {
            "dataset_dir": dataset_dir,
            "bundle_root": root,
            "device": f"$torch.device('{device}')",
            "num_workers": "0",
            **spec.overrides,
            **spec.strategies[strategy],
            **overrides,
        }
        for k, v in values.items():
            parser[k] = _literal(v)
        torch.manual_seed(0)
        trainer = parser.get_parsed_content("train#trainer")
        loader = parser.get_parsed_content("train#dataloader")
        batch = next(iter(loader))
        trainer.active_tasks = list(trainer.phases[-1]["tasks"])  # the task(s) the strategy's model is for
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--dataset_dir", help="data set folder (one bundle only; default: its ../shared/data set)")
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides (e.g. batch_size=8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cost"))
    args = parser.parse_args()
    if args.dataset_dir and len(args.bundles) != 1:
        raise SystemExit("--dataset_dir needs exactly one bundle in --bundles")
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.override)
    rows, ratios = [], []
    for bundle in args.bundles:
        spec = get_spec(bundle)
        data = args.dataset_dir or str(spec.default_dataset_dir)
        if not Path(data).is_dir():
            raise SystemExit(f"{bundle}: data set folder {data} not found (give --dataset_dir)")
        strategies = [spec.mtl, *dict.fromkeys(spec.single_task.values())]
        bundle_rows = [
            measure_strategy(spec, s, data, overrides, args.device, args.steps, args.warmup) for s in strategies
        ]
        for r in bundle_rows:
            print(r, flush=True)
        ratios.append(ratio_row(spec, bundle_rows))
        print(ratios[-1], flush=True)
        rows += [*bundle_rows, ratios[-1]]
    out = Path(args.out)
    write_csv(rows, out / "cost.csv")
    plot_cost(ratios, out / "cost.png")
    print(f"wrote {out / 'cost.csv'} and cost.png")


if __name__ == "__main__":
    main()
