"""Helpers for tests that run bundles through the real ``python -m monai.bundle`` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
# MONAI's bundle metadata schema (validated where the shared folder holds it)
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"


def bundle_configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def bundle_names() -> list[str]:
    """The bundles of the repository: folders of ``bundles/`` with a ``configs/metadata.json``."""
    return sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def cli_args(overrides: dict) -> list[str]:
    """``--key value`` arguments of the monai.bundle CLI; non-string values are passed as JSON."""
    return [x for k, v in overrides.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def config_arg(bundle: str, config: str | list[str]) -> str:
    """The ``--config_file`` argument of ``bundle``'s ``config`` file or files (merged in order)."""
    files = [str(bundle_configs(bundle) / c) for c in ([config] if isinstance(config, str) else config)]
    return files[0] if len(files) == 1 else json.dumps(files).replace('"', "'")


def bundle_command(bundle: str, config: str | list[str], overrides: dict, torchrun: int = 0) -> list[str]:
    """The command line of ``monai.bundle run`` of ``bundle``'s ``config`` file(s) (merged in order)."""
    cfg_dir = bundle_configs(bundle)
    cmd = ["-m", "monai.bundle", "run", "--config_file", config_arg(bundle, config)]
    cmd += ["--meta_file", str(cfg_dir / "metadata.json")]
    cmd += ["--logging_file", str(cfg_dir / "logging.conf"), *cli_args(overrides)]
    if torchrun:
        run = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={torchrun}"]
        return [sys.executable, *run, *cmd]
    return [sys.executable, *cmd]


def bundle_env(torchrun: int = 0) -> dict[str, str]:
    """The environment of a bundle subprocess (unbuffered; one thread per process under torchrun)."""
    threads = "1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2")
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads)


def run_bundle(
    bundle: str,
    config: str | list[str],
    overrides: dict,
    timeout: float = 600,
    check: bool = True,
    torchrun: int = 0,
) -> subprocess.CompletedProcess:
    """Run ``monai.bundle run`` from the repository root with ``--key value`` overrides; return the process."""
    cmd = bundle_command(bundle, config, overrides, torchrun)
    proc = subprocess.run(cmd, cwd=REPO, env=bundle_env(torchrun), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def log_of(proc: subprocess.CompletedProcess) -> str:
    """Everything a finished bundle run printed."""
    return proc.stdout + proc.stderr


def evaluate_bundle(bundle: str, bundle_root: Path, data_dir: Path, output_dir: Path, **overrides) -> dict:
    """Run ``bundle``'s evaluation (train.json + evaluate.json merged) of the model in ``bundle_root`` on
    ``data_dir``; return the ``metrics.json`` it wrote in ``output_dir``."""
    settings = {"dataset_dir": str(data_dir), "bundle_root": str(bundle_root), "output_dir": str(output_dir)}
    run_bundle(bundle, ["train.json", "evaluate.json"], {**settings, **overrides})
    return json.loads((Path(output_dir) / "metrics.json").read_text())
