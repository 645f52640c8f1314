"""What the bundle contract tests (``tests/test_bundle_contract.py``) need to know of each bundle: one small table
per bundle of tiny settings, how to damage its input and the error expected, what a resumed run logs and keeps,
and its network's example input and outputs. Everything else about a bundle is tested in its own test module."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from common.data import FactorTable
from tests.bundle_cli import bundle_configs

# The config files of each workflow, merged in order (``monai.bundle run --config_file``).
# evaluate.json is an override merged after train.json (as in model-zoo); inference.json stands alone.
WORKFLOW_CONFIGS = {
    "train": ["train.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "inference": ["inference.json"],
}

Damage = Callable[[Path, Path], list[str]]


@dataclass(frozen=True)
class BundleSpec:
    """The per-bundle part of the bundle contract tests.

    Args:
        name: the bundle's folder in ``bundles/``.
        data: the kind of its synthetic data set (``SYNTHETIC`` in ``tests/conftest.py``).
        small: tiny network and settings overrides, given to every run so a CPU epoch takes seconds.
        tasks: the tasks trained by default, as logged ("epoch 1: training tasks [...]").
        train: further overrides of the shared tiny trained model (``trained_bundle`` in ``tests/conftest.py``).
        channels: the names of the network input's channels (metadata ``channel_def``), from the inference config.
        spatial_shape: the network input's spatial shape the metadata describes, from the inference config.
        networks: the ids of the networks every workflow (train, evaluate, inference) builds alike.
        example_input: shape of an input of the TorchScript export of the network built with ``small``.
        example_outputs: the export's output shapes for ``example_input``, in the order it returns them.
        workflow_overrides: settings of the MONAI ``ConfigWorkflow`` property check besides ``dataset_dir``.
        model_files: files every training run writes to ``models/`` besides the resume checkpoints.
        resume_prefixes: file name prefixes of the resume checkpoints (one checkpoint each per run).
        checkpoints_logged: "Saved checkpoint at epoch: N" lines a run logs for its last epoch N.
        resume_epochs: epochs of the run killed and resumed (long enough that the kill lands mid-run).
        resume: further overrides of the killed and resumed runs.
        resume_log: lines the resumed run logs besides "resuming training from <checkpoint>".
        resume_state: further check of the resumed run's last resume state (``state``, ``epochs``).
        torchrun: overrides of the two-process (gloo) training runs, one run each.
        bad_inputs: name -> function damaging a copy of the data set (data, copy folder) and returning the texts
            the one clear error must hold.
        bad_input: further overrides of the runs on damaged input.
    """

    name: str
    data: str
    small: dict[str, Any]
    tasks: list[str]
    train: dict[str, Any]
    channels: Callable[[Any], list[str]]
    spatial_shape: Callable[[Any], list[int]]
    example_input: tuple[int, ...]
    example_outputs: dict[str, tuple[int, ...]]
    bad_inputs: dict[str, Damage]
    networks: tuple[str, ...] = ("network_def",)
    workflow_overrides: dict[str, Any] = field(default_factory=dict)
    model_files: tuple[str, ...] = ("model.pt",)
    resume_prefixes: tuple[str, ...] = ("resume_checkpoint_epoch",)
    checkpoints_logged: int = 1
    resume_epochs: int = 40
    resume: dict[str, Any] = field(default_factory=lambda: {"val_interval": 100})
    resume_log: tuple[str, ...] = ()
    resume_state: Callable[[dict, int], None] | None = None
    torchrun: tuple[dict[str, Any], ...] = ({},)
    bad_input: dict[str, Any] = field(default_factory=dict)


def copy_cases(src: Path, dst: Path, n: int, skip_seg: bool = False) -> list[Path]:
    """Copy the first ``n`` case folders of a BraTS-like set (and its labels.csv) to ``dst``; return the copies."""
    cases = sorted(p for p in src.iterdir() if p.is_dir())[:n]
    for case in cases:
        (dst / case.name).mkdir(parents=True)
        for f in case.iterdir():
            if not (skip_seg and f.name.endswith("_seg.nii.gz")):
                shutil.copy(f, dst / case.name / f.name)
    if (src / "labels.csv").exists():
        shutil.copy(src / "labels.csv", dst / "labels.csv")
    return [dst / c.name for c in cases]


# --- brats_mtl ---------------------------------------------------------------------------------------------------


def _brats_missing_modality(data: Path, bad: Path) -> list[str]:
    case = copy_cases(data, bad, 4)[0]
    (case / f"{case.name}_t1ce.nii.gz").unlink()
    return [case.name, f"{case.name}_t1ce"]


def _brats_empty(data: Path, bad: Path) -> list[str]:
    bad.mkdir(parents=True)
    return [str(bad)]


def _dwa_history_restored(state: dict, epochs: int) -> None:
    # DWA rolls its history before every epoch but the first, as in an uninterrupted run: state was restored
    assert int(state["weighting"]["epochs_done"]) == epochs - 1


BRATS_MTL = BundleSpec(
    name="brats_mtl",
    data="brats_like",
    small={"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
           "mask_patch_size": 8},
    tasks=["cls", "mim"],
    train={"epochs": 2, "weighting_name": "uw"},
    channels=lambda parser: parser["modalities"],
    spatial_shape=lambda parser: [parser["image_size"]] * 2,
    example_input=(1, 2, 32, 32),
    example_outputs={"cls": (1, 1), "mim": (1, 2, 32, 32)},
    resume_epochs=30,
    resume={"weighting_name": "dwa", "progress_bar": False},
    resume_state=_dwa_history_restored,
    torchrun=({"weighting_name": "ew", "batch_size": 8}, {"weighting_name": "pcgrad", "batch_size": 8},
              {"weighting_name": "upgrad", "weighting_args": {"use_autogram": True}, "batch_size": 8}),
    bad_inputs={"missing_modality": _brats_missing_modality, "empty": _brats_empty},
)


# --- glioma_seg_idh ----------------------------------------------------------------------------------------------


def _glioma_case(data: Path, bad: Path) -> Path:
    return copy_cases(data, bad, 4)[1]


def _glioma_shape(data: Path, bad: Path) -> list[str]:
    case = _glioma_case(data, bad)
    target = case / f"{case.name}_flair.nii.gz"
    img = nib.load(target)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), target)
    return [f"case '{case.name}'", f"{case.name}_flair.nii.gz", "shape (32, 32, 11) differs"]


def _glioma_labels(data: Path, bad: Path) -> list[str]:
    case = _glioma_case(data, bad)
    target = case / f"{case.name}_seg.nii.gz"
    img = nib.load(target)
    seg = np.asarray(img.dataobj).copy()
    seg[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(seg, img.affine), target)
    return [f"case '{case.name}'", f"{case.name}_seg.nii.gz", "segmentation labels [7] are outside"]


def _glioma_nan(data: Path, bad: Path) -> list[str]:
    case = _glioma_case(data, bad)
    target = case / f"{case.name}_t1ce.nii.gz"
    img = nib.load(target)
    voxels = np.asarray(img.dataobj).astype(np.float32)
    voxels[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), target)
    return [f"case '{case.name}'", f"{case.name}_t1ce.nii.gz", "holds 1 NaN voxel"]


def _glioma_idh(data: Path, bad: Path) -> list[str]:
    name = _glioma_case(data, bad).name
    text = (bad / "labels.csv").read_text().replace(f"{name},", f"{name},IDH1-R132H,", 1)
    lines = [ln if not ln.startswith(f"{name},") else f"{name},IDH1-R132H" for ln in text.splitlines()]
    (bad / "labels.csv").write_text("\n".join(lines) + "\n")
    return [f"case '{name}'", "labels.csv", "idh_status='IDH1-R132H' is not one of"]


GLIOMA_SEG_IDH = BundleSpec(
    name="glioma_seg_idh",
    data="brats_like",
    small={"features": [4, 8, 16], "patch_size": 16, "samples_per_case": 2, "batch_size": 4, "sw_batch_size": 16},
    tasks=["seg", "idh"],
    train={"epochs": 2, "val_interval": 1},
    channels=lambda parser: parser["modalities"],
    spatial_shape=lambda parser: [parser["patch_size"], parser["patch_size"], parser["slices"]],
    example_input=(1, 3, 16, 16, 3),
    example_outputs={"seg": (1, 1, 16, 16, 3), "idh": (1, 1)},
    resume={"val_interval": 100, "progress_bar": False},
    torchrun=({"val_interval": 1},),
    bad_inputs={"shape": _glioma_shape, "labels": _glioma_labels, "nan": _glioma_nan, "idh": _glioma_idh},
    bad_input={"epochs": 1, "val_fraction": 0.25, "test_fraction": 0.25},
)


# --- fundus_glaucoma ---------------------------------------------------------------------------------------------

FUNDUS_CASE = "fundus_002"


def _fundus_copy(data: Path, bad: Path) -> Path:
    shutil.copytree(data, bad)
    return bad / "images" / f"{FUNDUS_CASE}.jpg"


def _fundus_grayscale(data: Path, bad: Path) -> list[str]:
    image = _fundus_copy(data, bad)
    Image.open(image).convert("L").save(image)
    return [f"case '{FUNDUS_CASE}'", f"{FUNDUS_CASE}.jpg", "is a grayscale image"]


def _fundus_rgba(data: Path, bad: Path) -> list[str]:
    _fundus_copy(data, bad).unlink()
    rgba = Image.open(data / "images" / f"{FUNDUS_CASE}.jpg").convert("RGBA")
    rgba.putalpha(128)  # half transparent: refused (an opaque alpha channel is dropped, the photo converted to RGB)
    rgba.save(bad / "images" / f"{FUNDUS_CASE}.png")
    return [f"case '{FUNDUS_CASE}'", f"{FUNDUS_CASE}.png", "has 4 channels"]


def _fundus_tiny(data: Path, bad: Path) -> list[str]:
    image = _fundus_copy(data, bad)
    Image.open(image).resize((60, 50)).save(image)
    return [f"case '{FUNDUS_CASE}'", f"{FUNDUS_CASE}.jpg", "smaller than the minimum side 128"]


def _fundus_mask_size(data: Path, bad: Path) -> list[str]:
    _fundus_copy(data, bad)
    cup = bad / "masks" / f"{FUNDUS_CASE}_cup.png"
    Image.open(cup).resize((100, 90)).save(cup)
    return [f"case '{FUNDUS_CASE}'", f"{FUNDUS_CASE}_cup.png",
            "mask 'cup' size 90x100 differs from the image size 160x176"]


def _fundus_missing_mask(data: Path, bad: Path) -> list[str]:
    _fundus_copy(data, bad)
    (bad / "masks" / f"{FUNDUS_CASE}_disc.png").unlink()
    return [f"case '{FUNDUS_CASE}'", f"{FUNDUS_CASE}_disc.png", "'disc' mask is missing"]


def _fundus_label(data: Path, bad: Path) -> list[str]:
    _fundus_copy(data, bad)
    rows = list(csv.reader((bad / "labels.csv").open()))
    for row in rows[1:]:
        if row[0] == FUNDUS_CASE:
            row[1] = "yes"
    with (bad / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return [f"case '{FUNDUS_CASE}'", "labels.csv", "glaucoma='yes' is not 1, 0 or empty"]


FUNDUS_GLAUCOMA = BundleSpec(
    name="fundus_glaucoma",
    data="fundus_like",
    # tiny networks and inputs so a CPU epoch takes about a second
    small={"features": [4, 8, 16], "crop_size": 32, "locator_size": 32, "locator_features": [4, 4, 8, 16, 32, 4],
           "batch_size": 4, "locator_batch_size": 4, "train_max_side": 256},
    tasks=["seg", "glaucoma"],
    train={"locator_epochs": 2, "epochs": 2, "val_interval": 1},
    channels=lambda parser: ["R", "G", "B"],
    spatial_shape=lambda parser: [parser["crop_size"]] * 2,
    networks=("network_def", "locator_def"),
    example_input=(1, 3, 32, 32),
    example_outputs={"seg": (1, 2, 32, 32), "glaucoma": (1, 1)},
    model_files=("model.pt", "locator.pt"),
    resume_prefixes=("locator_resume_checkpoint_epoch", "resume_checkpoint_epoch"),
    checkpoints_logged=2,
    # the locator finished before the kill: it is restored, not trained again; the crop model continues
    resume={"locator_epochs": 2, "val_interval": 100, "progress_bar": False},
    resume_log=("locator_resume_checkpoint_epoch=2.pt",),
    torchrun=({"locator_epochs": 2, "val_interval": 1},),
    bad_inputs={"grayscale": _fundus_grayscale, "rgba": _fundus_rgba, "tiny": _fundus_tiny,
                "mask_size": _fundus_mask_size, "missing_mask": _fundus_missing_mask, "label": _fundus_label},
    bad_input={"locator_epochs": 1, "epochs": 1, "val_fraction": 0.5},
)


# --- cmr_fundus --------------------------------------------------------------------------------------------------

CMR_FACTORS = FactorTable(json.loads((bundle_configs("cmr_fundus") / "factors.json").read_text())["factors"])


def _cmr_rewrite(data: Path, bad: Path, change: Callable[[Path, list[dict]], list[str]]) -> list[str]:
    shutil.copytree(data, bad)
    rows = list(csv.DictReader(open(bad / "factors.csv")))
    expected = change(bad, rows)
    with open(bad / "factors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return expected


def _cmr_sbp412(data: Path, bad: Path) -> list[str]:
    def change(bad: Path, rows: list[dict]) -> list[str]:
        rows[4]["sbp"] = "412"
        return ["factors.csv", "row 6", "sbp=412 is outside the plausible range [60, 260] mmHg"]

    return _cmr_rewrite(data, bad, change)


def _cmr_missing_image(data: Path, bad: Path) -> list[str]:
    def change(bad: Path, rows: list[dict]) -> list[str]:
        (bad / "images" / rows[3]["image"]).unlink()
        return ["factors.csv", "row 5", f"{rows[3]['image']} is listed but does not exist"]

    return _cmr_rewrite(data, bad, change)


def _cmr_unknown_factor(data: Path, bad: Path) -> list[str]:
    def change(bad: Path, rows: list[dict]) -> list[str]:
        for r in rows:
            r["ldl"] = "120"
        return ["factors.csv", "columns ['ldl'] are not factors of the table"]

    return _cmr_rewrite(data, bad, change)


CMR_FUNDUS = BundleSpec(
    name="cmr_fundus",
    data="cmr_fundus_like",
    # a tiny network at 32 px so a CPU epoch takes well under a second
    small={"image_size": 32, "min_image_size": 32, "batch_size": 4, "encoder_channels": [8, 8, 16, 16],
           "expert_dim": 8, "hidden_dim": 8, "progress_bar": False},
    tasks=CMR_FACTORS.names,
    train={"epochs": 2},
    channels=lambda parser: ["R", "G", "B"],
    spatial_shape=lambda parser: [parser["image_size"]] * 2,
    example_input=(2, 3, 32, 32),
    example_outputs={name: (2, 1) for name in CMR_FACTORS.names},
    workflow_overrides={"min_image_size": 32},
    bad_inputs={"sbp412": _cmr_sbp412, "missing_image": _cmr_missing_image, "unknown_factor": _cmr_unknown_factor},
    bad_input={"epochs": 1},
)

SPECS = {spec.name: spec for spec in (BRATS_MTL, GLIOMA_SEG_IDH, FUNDUS_GLAUCOMA, CMR_FUNDUS)}


def spec_of(bundle: str) -> BundleSpec:
    """The contract-test table of ``bundle``; a bundle without one fails its contract tests by name."""
    if bundle not in SPECS:
        raise KeyError(f"bundle {bundle!r} has no BundleSpec in tests/bundle_specs.py: add one to test its contract")
    return SPECS[bundle]


# every bundle's tiny settings with one locator epoch for a two-stage bundle: a whole CPU run in seconds
QUICK = {name: {**spec.small, **({"locator_epochs": 1} if "locator_epochs" in spec.train else {})}
         for name, spec in SPECS.items()}
