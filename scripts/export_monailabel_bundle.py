"""Export one of the repository's bundles as a self-contained bundle folder for a MONAI Label server.

``python scripts/export_monailabel_bundle.py <bundle> <out dir> [--models DIR] [--set key=json ...]`` writes
``<out dir>/<bundle name>/`` with ``configs/``, ``docs/``, ``LICENSE``, ``models/`` (the trained checkpoints and
their side files, e.g. fundus_glaucoma's ``locator.pt`` and ``glaucoma_score.json``) and ``common/``, a copy of the
project's shared package. MONAI Label puts only the bundle folder on ``sys.path``, so shipping ``common/`` at the
bundle's top level makes the configs' ``common.*`` targets resolve unchanged, without installing the project (whose
pydicom 3 pin conflicts with MONAI Label's pydicom<3) into the MONAI Label environment.

``--set key=json`` replaces a top-level config value in every config that defines it, for checkpoints trained with
overrides (e.g. ``--set features=[4,8,16]``); the export checks that ``models/model.pt`` loads into the configured
``network_def`` and stops with a clear error otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
__all__ = ["export_bundle", "parse_overrides"]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=json`` strings (a value that is not JSON is kept as a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got '{item}'.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _check_checkpoint(bundle_dir: Path) -> None:
    """Load ``models/model.pt`` into the inference config's ``network_def``; raise ValueError on a mismatch."""
    import torch
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(bundle_dir))
    try:
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle_dir)
        parser.get_parsed_content("imports")
        network = parser.get_parsed_content("network_def")
        ckpt = bundle_dir / "models" / "model.pt"
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        try:
            network.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"{ckpt}: does not fit the exported network_def (was it trained with overrides? pass them with "
                f"--set key=json): {' '.join(str(e).split())[:300]}"
            ) from e
    finally:
        sys.path.remove(str(bundle_dir))


def export_bundle(
    bundle: str | Path,
    out_dir: str | Path,
    models_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``<out_dir>/<bundle name>/`` for MONAI Label and return it.

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        out_dir: folder to write the bundle folder into (e.g. a MONAI Label app's ``model/``); created.
        models_dir: folder of the trained checkpoints (default: the bundle's ``models/``); must hold ``model.pt``.
        overrides: top-level config values to replace in every config that defines them.
        check: load ``model.pt`` into ``network_def`` after export (needs torch and monai).

    Raises:
        ValueError: the bundle, its configs or ``model.pt`` are missing, an override names a key no config has,
            or the checkpoint does not fit the network.
    """
    src = Path(bundle) if Path(bundle).is_dir() else REPO / "bundles" / str(bundle)
    if not (src / "configs" / "inference.json").is_file():
        raise ValueError(f"bundle: {src} is not a bundle folder (no configs/inference.json).")
    models = Path(models_dir) if models_dir is not None else src / "models"
    if not (models / "model.pt").is_file():
        raise ValueError(f"models_dir: {models} holds no model.pt (train the bundle first or pass --models).")
    dst = Path(out_dir) / src.name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(src / "configs", dst / "configs", ignore=ignore)
    for extra in ("docs", "LICENSE"):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, dst / extra, ignore=ignore)
        elif (src / extra).is_file():
            shutil.copy2(src / extra, dst / extra)
    shutil.copytree(models, dst / "models", ignore=shutil.ignore_patterns("*.tmp", "*resume*"))
    shutil.copytree(REPO / "common", dst / "common", ignore=ignore)

    unused = set(overrides or {})
    for cfg in sorted((dst / "configs").glob("*.json")):
        config = json.loads(cfg.read_text())
        hit = [k for k in (overrides or {}) if isinstance(config, dict) and k in config]
        if hit:
            config.update({k: overrides[k] for k in hit})
            cfg.write_text(json.dumps(config, indent=4) + "\n")
            unused -= set(hit)
    if unused:
        raise ValueError(f"overrides: no config of {src.name} defines {sorted(unused)}.")
    if check:
        try:
            _check_checkpoint(dst)
        except ValueError:
            shutil.rmtree(dst)
            raise
    return dst


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle name under bundles/ or a bundle folder")
    parser.add_argument("out_dir", help="folder the bundle folder is written into, e.g. <app>/model")
    parser.add_argument("--models", default=None, help="folder of the trained checkpoints (default: <bundle>/models)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="config override, repeatable")
    parser.add_argument("--no-check", action="store_true", help="skip loading model.pt into network_def")
    args = parser.parse_args(argv)
    try:
        out = export_bundle(args.bundle, args.out_dir, args.models, parse_overrides(args.set), check=not args.no_check)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(out)


if __name__ == "__main__":
    main()
