"""Helpers for tests that run bundles through the real ``python -m monai.bundle`` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
# tiny fundus_glaucoma networks and inputs so a CPU epoch takes about a second
TINY_FUNDUS = {
    "features": [4, 8, 16],
    "crop_size": 32,
    "locator_size": 32,
    "locator_features": [4, 4, 8, 16, 32, 4],
    "batch_size": 4,
    "locator_batch_size": 4,
    "train_max_side": 256,
}


def bundle_configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def run_bundle(
    bundle: str,
    config: str | list[str],
    overrides: dict,
    timeout: float = 600,
    check: bool = True,
    torchrun: int = 0,
) -> subprocess.CompletedProcess:
    """Run ``monai.bundle run`` from the repository root with ``--key value`` overrides; return the process."""
    cfg_dir = bundle_configs(bundle)
    files = [str(cfg_dir / c) for c in ([config] if isinstance(config, str) else config)]
    cfg_arg = files[0] if len(files) == 1 else json.dumps(files).replace('"', "'")
    cmd = ["-m", "monai.bundle", "run", "--config_file", cfg_arg, "--meta_file", str(cfg_dir / "metadata.json")]
    cmd += ["--logging_file", str(cfg_dir / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    if torchrun:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={torchrun}"]
    else:
        prefix = [sys.executable]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(prefix + cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def check_workflow_properties(bundle: str, dataset_dir: str | Path) -> None:
    """Every required MONAI bundle property of train.json and inference.json is present (model-zoo's check)."""
    from monai.bundle import ConfigWorkflow

    cfg_dir = bundle_configs(bundle)
    for cfg, kind in (("train.json", "train"), ("inference.json", "infer")):
        wf = ConfigWorkflow(
            config_file=str(cfg_dir / cfg),
            meta_file=str(cfg_dir / "metadata.json"),
            workflow_type=kind,
            logging_file=str(cfg_dir / "logging.conf"),
            dataset_dir=str(dataset_dir),
        )
        wf.initialize()
        assert not wf.check_properties(), f"{cfg}: missing properties {wf.check_properties()}"


def train_tiny_fundus(work: Path, seed: int = 3) -> tuple[Path, Path]:
    """A synthetic fundus set in ``work/data`` and a fundus_glaucoma model trained one epoch on it with
    :data:`TINY_FUNDUS` in ``work/bundle``; returns (data folder, bundle root)."""
    from common.data.synthetic_fundus import generate_fundus_like

    data = generate_fundus_like(work / "data", n_images=12, size=(160, 176), seed=seed)
    root = work / "bundle"
    overrides = {"dataset_dir": str(data), "bundle_root": str(root), "locator_epochs": 1, "epochs": 1}
    run_bundle("fundus_glaucoma", "train.json", {**overrides, "val_interval": 1, **TINY_FUNDUS})
    return data, root
