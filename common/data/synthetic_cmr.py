"""Synthetic colour fundus photographs with cardiometabolic factor values that the images encode (cmr_fundus).

Each patient gets SePL's 15 factors drawn from correlated latent variables (age and sex drive height, weight,
blood pressure and blood tests) and two eyes (``<patient>_left.png``, ``<patient>_right.png``). Each image is a
fundus disc on a black background, with an optic disc and vessels radiating from it. The content follows the
factors, so a network can learn them: older patients have paler, yellower fundi; sex tints the green channel;
vessel width follows systolic pressure; the optic disc's brightness follows BMI; the number of bright spots
(exudates) follows HbA1c. ``factors.csv`` holds one row per image (``image``, ``patient``, ``eye`` and one column
per factor; sex as ``male``/``female``); about ``missing_fraction`` of the values are left empty.

Command line: ``python -m common.data.synthetic_cmr --out DIR [--n_patients N --size S --seed S]``.
"""

from __future__ import annotations

import argparse
import csv
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_FACTORS", "generate_cmr_fundus_like"]

#: Factor columns written by :func:`generate_cmr_fundus_like`, in SePL's order.
SYNTHETIC_FACTORS = (
    "sex",
    "age",
    "height",
    "weight",
    "bmi",
    "waist",
    "sbp",
    "dbp",
    "total_cholesterol",
    "glucose",
    "triglycerides",
    "hba1c",
    "bun",
    "creatinine",
    "uric_acid",
)


def _patient_factors(rng: np.random.Generator) -> dict[str, float]:
    """One patient's factor values (original units) from age, sex and two latent health variables."""
    male = float(rng.random() < 0.5)
    age = float(np.clip(rng.normal(55, 12), 25, 85))
    obesity, metabolic = rng.normal(size=2)
    height = 163 + 12 * male - 0.05 * (age - 55) + rng.normal(0, 5)
    bmi = float(np.clip(24.5 + 3.0 * obesity + rng.normal(0, 0.8), 16, 45))
    weight = bmi * (height / 100) ** 2
    waist = 70 + 10 * male + 2.2 * (bmi - 20) + rng.normal(0, 3)
    sbp = 100 + 0.6 * (age - 25) + 1.5 * (bmi - 24.5) + 6 * metabolic + rng.normal(0, 5)
    dbp = 60 + 0.4 * (sbp - 100) + rng.normal(0, 4)
    hba1c = float(np.clip(5.4 + 0.5 * metabolic + 0.015 * (age - 55) + rng.normal(0, 0.2), 4.2, 12))
    glucose = 18 * hba1c - 5 + rng.normal(0, 6)
    return {
        "sex": male,
        "age": age,
        "height": height,
        "weight": weight,
        "bmi": bmi,
        "waist": waist,
        "sbp": sbp,
        "dbp": dbp,
        "total_cholesterol": 190 + 0.5 * (age - 55) + 8 * obesity + rng.normal(0, 15),
        "glucose": glucose,
        "triglycerides": float(np.clip(120 + 25 * obesity + 20 * metabolic + rng.normal(0, 20), 30, 600)),
        "hba1c": hba1c,
        "bun": 14 + 0.08 * (age - 55) + rng.normal(0, 2),
        "creatinine": float(np.clip(0.75 + 0.2 * male + 0.004 * (age - 55) + rng.normal(0, 0.06), 0.4, 2.0)),
        "uric_acid": 4.5 + 1.2 * male + 0.3 * obesity + rng.normal(0, 0.5),
    }


def _render(rng: np.random.Generator, f: dict[str, float], size: int, left: bool) -> np.ndarray:
    """RGB uint8 image ``(size, size, 3)`` of one eye whose content follows the factor values ``f``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + rng.normal(0, 0.01), 0.5 + rng.normal(0, 0.01)
    r = np.hypot(xx - cx, yy - cy)
    inside = r < 0.46
    age_t = (f["age"] - 25) / 60  # 0 (young) .. 1 (old)
    base = np.array([0.78, 0.32 + 0.06 * f["sex"], 0.12], np.float32)
    base = base * (1 - 0.35 * age_t) + np.array([0.85, 0.70, 0.35], np.float32) * 0.35 * age_t
    shade = 1.0 - 0.45 * (r / 0.46) ** 2  # vignetting
    img = base[None, None, :] * shade[..., None]
    img += rng.normal(0, 0.015, (size, size, 1)).astype(np.float32)
    # optic disc (nasal side: right of centre for a right eye, left for a left eye), brightness follows BMI
    dx = -0.18 if left else 0.18
    ox, oy = cx + dx, cy + rng.normal(0, 0.01)
    disc = np.hypot(xx - ox, yy - oy)
    disc_gain = 0.45 + 0.03 * (f["bmi"] - 24.5)
    img += (np.clip(1 - disc / 0.07, 0, 1) ** 0.5)[..., None] * np.array([disc_gain, disc_gain, 0.6 * disc_gain])
    # vessels: rays from the disc, width follows systolic pressure
    width = 0.006 + 0.0045 * np.clip((f["sbp"] - 100) / 30, 0, 3)
    for angle in rng.uniform(0, 2 * np.pi, 7):
        ux, uy = np.cos(angle), np.sin(angle)
        along = (xx - ox) * ux + (yy - oy) * uy
        across = np.abs(-(xx - ox) * uy + (yy - oy) * ux)
        vessel = (along > 0.05) & (across < width * (1.2 - along))
        img[vessel] *= np.array([0.55, 0.35, 0.45], np.float32)
    # bright exudates, as many as HbA1c above 5.5 says
    for _ in range(int(np.clip(round(3 * (f["hba1c"] - 5.5)), 0, 12))):
        ex, ey = cx + rng.uniform(-0.3, 0.3), cy + rng.uniform(-0.3, 0.3)
        spot = np.hypot(xx - ex, yy - ey) < 0.018
        img[spot] = np.array([0.95, 0.90, 0.55], np.float32)
    img[~inside] = 0.0
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def generate_cmr_fundus_like(
    out_dir: str | PathLike,
    n_patients: int = 24,
    size: int = 96,
    seed: int = 0,
    missing_fraction: float = 0.1,
    eyes: tuple[str, ...] = ("left", "right"),
) -> Path:
    """Write ``n_patients`` x ``len(eyes)`` PNG photographs into ``out_dir/images`` and ``out_dir/factors.csv``.

    Args:
        out_dir: output folder (created).
        n_patients: number of patients.
        size: image side in pixels.
        seed: random seed.
        missing_fraction: share of factor values left empty (missing), drawn per patient and factor.
        eyes: eyes photographed per patient.

    Returns:
        ``out_dir`` as a Path.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}.")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}.")
    if not 0.0 <= missing_fraction < 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1), got {missing_fraction}.")
    if not eyes or any(e not in ("left", "right") for e in eyes):
        raise ValueError(f"eyes must name 'left' and/or 'right', got {eyes}.")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_patients):
        patient = f"p{i:03d}"
        values = _patient_factors(rng)
        missing = {k for k in SYNTHETIC_FACTORS if rng.random() < missing_fraction}
        for eye in eyes:
            name = f"{patient}_{eye}.png"
            Image.fromarray(_render(rng, values, size, eye == "left")).save(out / "images" / name)
            row = {"image": name, "patient": patient, "eye": eye}
            for k in SYNTHETIC_FACTORS:
                if k in missing:
                    row[k] = ""
                elif k == "sex":
                    row[k] = "male" if values[k] else "female"
                else:
                    row[k] = f"{values[k]:.3g}" if k in ("creatinine", "hba1c") else f"{values[k]:.1f}"
            rows.append(row)
    with open(out / "factors.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "patient", "eye", *SYNTHETIC_FACTORS])
        writer.writeheader()
        writer.writerows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_patients", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing_fraction", type=float, default=0.1)
    args = parser.parse_args()
    path = generate_cmr_fundus_like(args.out, args.n_patients, args.size, args.seed, args.missing_fraction)
    print(f"wrote {args.n_patients} synthetic patients to {path}")


if __name__ == "__main__":
    main()
