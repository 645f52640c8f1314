"""Synthetic BraTS-like brain MRI cases (volumes, tumour segmentations, IDH labels) for tests and smoke runs.

Each case is a head ellipsoid (background exactly 0, some axial slices above and below it empty) with a scalp
shell, ventricles, smooth tissue texture and noise. About ``lesion_fraction`` of the cases hold one tumour of
random size and position: oedema (label 2, bright on FLAIR/T2), a core (label 1) and, for IDH-wildtype cases, an
enhancing rim (label 4, bright on T1ce) around a necrotic centre (label 1, dark on T1/T1ce). IDH-mutant tumours
do not enhance, so ``idh_status`` can be learnt from T1ce; cases without a tumour are ``unknown``.

Command line: ``python -m common.data.synthetic --out DIR [--n_cases N --seed S]``.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from .brats import BRATS_MODALITIES

__all__ = ["generate_brats_like"]

# Mean intensity per modality of: brain, scalp shell, ventricles (CSF).
_TISSUE = {
    "t1": (0.55, 0.90, 0.15),
    "t1ce": (0.50, 0.80, 0.15),
    "t2": (0.45, 0.50, 0.95),
    "flair": (0.50, 0.40, 0.10),
}
# Intensity change per modality of: oedema, non-enhancing core, enhancing rim, necrosis.
_LESION = {
    "t1": (-0.10, -0.20, -0.15, -0.30),
    "t1ce": (-0.05, -0.10, 0.60, -0.25),
    "t2": (0.40, 0.35, 0.30, 0.50),
    "flair": (0.45, 0.35, 0.30, 0.20),
}


def _ellipsoid_distance(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid distance (< 1 inside) of every voxel of a ``(3, X, Y, Z)`` coordinate grid."""
    offset = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    return np.sqrt((offset**2).sum(axis=0))


def _make_case(
    rng: np.random.Generator, shape: tuple[int, int, int], modalities: Sequence[str], lesion: bool, wildtype: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Volumes ``{modality: float32 (X, Y, Z)}`` and BraTS-label seg (uint8) of one case."""
    size = np.asarray(shape, dtype=np.float64)
    grid = np.indices(shape, dtype=np.float64)
    centre = (size - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * size
    radii = size * np.array([0.40, 0.44, 0.36]) * rng.uniform(0.93, 1.03, 3)
    head_d = _ellipsoid_distance(grid, centre, radii)
    head = head_d < 1.0
    brain = head_d < 0.86
    ventricles = _ellipsoid_distance(grid, centre, radii * np.array([0.16, 0.28, 0.22])) < 1.0

    seg = np.zeros(shape, dtype=np.uint8)
    regions = {}
    if lesion:
        # Centre in brain tissue (outside the ventricles, inside the brain); radii in voxels (1 mm spacing).
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        lesion_centre = centre + direction * rng.uniform(0.35, 0.6) * radii * 0.86
        lesion_radii = np.array([min(shape[0], shape[1])] * 2 + [shape[2]], dtype=np.float64)
        lesion_radii *= rng.uniform(0.08, 0.18) * rng.uniform(0.85, 1.15, 3)
        lesion_radii = np.maximum(lesion_radii, 2.5)
        oedema_d = _ellipsoid_distance(grid, lesion_centre, lesion_radii)
        core_scale = rng.uniform(0.45, 0.65)
        tissue = brain & ~ventricles
        oedema = (oedema_d < 1.0) & tissue
        core = (oedema_d < core_scale) & tissue
        if wildtype:
            necrosis = (oedema_d < core_scale * 0.55) & tissue
            rim = core & ~necrosis
            regions = {"oedema": oedema & ~core, "rim": rim, "necrosis": necrosis}
            seg[regions["oedema"]], seg[rim], seg[necrosis] = 2, 4, 1
        else:
            regions = {"oedema": oedema & ~core, "core": core}
            seg[regions["oedema"]], seg[core] = 2, 1

    volumes = {}
    for modality in modalities:
        brain_level, scalp_level, csf_level = _TISSUE[modality]
        oedema_delta, core_delta, rim_delta, necrosis_delta = _LESION[modality]
        volume = np.where(brain, brain_level, scalp_level)
        volume[ventricles] = csf_level
        for _ in range(3):  # smooth texture: random low-frequency waves
            freq = rng.uniform(0.1, 0.35, 3)
            phase = rng.uniform(0, 2 * np.pi)
            volume = volume + 0.05 * np.cos((grid * freq[:, None, None, None]).sum(axis=0) + phase)
        for name, delta in (
            ("oedema", oedema_delta),
            ("core", core_delta),
            ("rim", rim_delta),
            ("necrosis", necrosis_delta),
        ):
            if name in regions:
                volume[regions[name]] += delta
        volume = volume + rng.normal(0.0, 0.03, shape)
        volume = np.where(head, np.maximum(volume, 0.02), 0.0) * rng.uniform(80, 120)
        volumes[modality] = volume.astype(np.float32)
    return volumes, seg


def generate_brats_like(
    out_dir: str | PathLike,
    n_cases: int = 12,
    shape: Sequence[int] = (64, 64, 24),
    modalities: Sequence[str] = BRATS_MODALITIES,
    lesion_fraction: float = 0.75,
    seed: int = 0,
    seg_labels: str = "brats",
) -> list[str]:
    """Write a synthetic BraTS-like data set; the same arguments give the same files.

    Writes ``<out_dir>/<case>/<case>_<modality>.nii.gz`` (float32), ``<case>_seg.nii.gz`` (uint8) with an RAS
    1 mm affine, and ``<out_dir>/labels.csv`` with columns ``patient,idh_status`` (mutant, wildtype, unknown).

    Args:
        out_dir: output folder (created).
        n_cases: number of cases.
        shape: volume shape (X, Y, Z); Z is the axial axis.
        modalities: modalities to write, a subset of :data:`~common.data.brats.BRATS_MODALITIES`.
        lesion_fraction: share of cases with a tumour (``round(n_cases * lesion_fraction)`` of them).
        seed: random seed.
        seg_labels: ``"brats"`` for labels 0, 1 (necrosis / non-enhancing core), 2 (oedema), 4 (enhancing), or
            ``"binary"`` for 0/1.

    Returns:
        The case ids, sorted.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}.")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {tuple(shape)}.")
    unknown = [m for m in modalities if m not in BRATS_MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {list(BRATS_MODALITIES)}, got {list(modalities)}.")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}.")
    if seg_labels not in ("brats", "binary"):
        raise ValueError(f"seg_labels must be 'brats' or 'binary', got '{seg_labels}'.")

    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    n_lesion = round(n_cases * lesion_fraction)
    lesion_cases = set(rng.permutation(n_cases)[:n_lesion].tolist())
    wildtype_draw = rng.permutation(n_lesion) < n_lesion // 2  # half of the tumours are IDH-wildtype
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0  # RAS, 1 mm, origin at the volume centre

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases, statuses, k = [], [], 0
    for i in range(n_cases):
        case = f"synth_{i:03d}"
        lesion = i in lesion_cases
        wildtype = bool(wildtype_draw[k]) if lesion else False
        k += int(lesion)
        volumes, seg = _make_case(np.random.default_rng([seed, i]), shape, modalities, lesion, wildtype)
        if seg_labels == "binary":
            seg = (seg > 0).astype(np.uint8)
        case_dir = out / case
        case_dir.mkdir(exist_ok=True)
        for modality, volume in volumes.items():
            nib.save(nib.Nifti1Image(volume, affine), case_dir / f"{case}_{modality}.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), case_dir / f"{case}_seg.nii.gz")
        cases.append(case)
        statuses.append(("wildtype" if wildtype else "mutant") if lesion else "unknown")

    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "idh_status"])
        writer.writerows(zip(cases, statuses, strict=True))
    return cases


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write a synthetic data set and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n_cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 24), metavar=("X", "Y", "Z"))
    parser.add_argument("--modalities", nargs="+", default=list(BRATS_MODALITIES))
    parser.add_argument("--lesion_fraction", type=float, default=0.75)
    parser.add_argument("--seg_labels", choices=("brats", "binary"), default="brats")
    args = parser.parse_args(argv)
    cases = generate_brats_like(
        args.out, args.n_cases, args.shape, args.modalities, args.lesion_fraction, args.seed, args.seg_labels
    )
    with (Path(args.out) / "labels.csv").open(newline="", encoding="utf-8") as handle:
        statuses = [row["idh_status"] for row in csv.DictReader(handle)]
    counts = {s: statuses.count(s) for s in ("mutant", "wildtype", "unknown")}
    files = ", ".join(f"<case>_{m}.nii.gz" for m in [*args.modalities, "seg"])
    print(f"wrote {len(cases)} cases ({cases[0]} .. {cases[-1]}) to {args.out}: {files}")
    print(f"wrote {Path(args.out) / 'labels.csv'}: idh_status {counts} (unknown = no tumour)")


if __name__ == "__main__":
    main()
