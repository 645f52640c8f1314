"""Synthetic colour fundus photographs with optic disc/cup soft maps, glaucoma labels and expert CDRs.

Each image is a dark frame around a round orange field of view with shading, noise and a few dark vessels
leaving a bright yellowish optic disc (an ellipse at a random place in the nasal half) that holds a paler cup.
Glaucomatous eyes get a large vertical cup-to-disc ratio (0.6-0.85), normal eyes a small one (0.3-0.5), so the
label can be learnt from the cup. Four simulated "experts" outline disc and cup with small size differences:
masks are soft maps 0/64/128/191/255 (how many experts marked a pixel), as in Drishti-GS, and each expert's
vertical CDR is written to ``labels.csv`` with an official-style ``source_split`` (the last quarter: ``test``).

Command line: ``python -m common.data.synthetic_fundus --out DIR [--n_images N --seed S]``.
"""

from __future__ import annotations

import argparse
import csv
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["generate_fundus_like"]

N_EXPERTS = 4


def _ellipse(rr: np.ndarray, cc: np.ndarray, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    return ((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2 <= 1.0


def _one_image(rng: np.random.Generator, height: int, width: int, glaucoma: bool) -> tuple:
    rr, cc = np.mgrid[0:height, 0:width].astype(np.float32)
    fov = _ellipse(rr, cc, (height / 2, width / 2), (0.47 * height, 0.47 * height))
    shade = 1.0 - 0.35 * np.sqrt(((rr - height / 2) / height) ** 2 + ((cc - width / 2) / width) ** 2) * 2
    base = np.stack([0.72 * shade, 0.30 * shade, 0.12 * shade], axis=-1)
    side = 1 if rng.random() < 0.5 else -1  # left or right eye: disc left or right of the centre
    centre = (height * rng.uniform(0.4, 0.6), width / 2 + side * width * rng.uniform(0.12, 0.22))
    disc_r = height * rng.uniform(0.08, 0.11)
    disc_radii = (disc_r * rng.uniform(1.0, 1.12), disc_r)  # slightly taller than wide, as real discs
    cdr = rng.uniform(0.6, 0.85) if glaucoma else rng.uniform(0.3, 0.5)
    cup_radii = (disc_radii[0] * cdr, disc_radii[1] * cdr * rng.uniform(0.85, 1.0))
    cup_centre = (centre[0] + rng.uniform(-0.05, 0.05) * disc_r, centre[1] + side * rng.uniform(0.0, 0.08) * disc_r)
    image = base.copy()
    for _ in range(6):  # vessels: dark curves leaving the disc
        angle = rng.uniform(0, 2 * np.pi)
        bend = rng.uniform(-0.004, 0.004)
        t = np.linspace(0, 0.6 * height, 400)
        ys = centre[0] + t * np.sin(angle) + bend * t**2
        xs = centre[1] + t * np.cos(angle)
        ok = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        width_px = max(1, int(height / 200))
        for y, x in zip(ys[ok].astype(int), xs[ok].astype(int)):
            image[max(0, y - width_px) : y + width_px + 1, max(0, x - width_px) : x + width_px + 1] *= 0.7
    disc = _ellipse(rr, cc, centre, disc_radii)
    cup = _ellipse(rr, cc, cup_centre, cup_radii) & disc
    image[disc] = 0.6 * image[disc] + 0.4 * np.array([0.95, 0.75, 0.45])
    image[cup] = 0.5 * image[cup] + 0.5 * np.array([1.0, 0.93, 0.75])
    image += rng.normal(0, 0.02, image.shape)
    image[~fov] = 0.02
    rgb = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    disc_soft = np.zeros((height, width), np.float32)
    cup_soft = np.zeros((height, width), np.float32)
    cdrs = []
    for _ in range(N_EXPERTS):
        d_scale, c_scale = rng.uniform(0.96, 1.04), rng.uniform(0.93, 1.07)
        d = _ellipse(rr, cc, centre, (disc_radii[0] * d_scale, disc_radii[1] * d_scale))
        c = _ellipse(rr, cc, cup_centre, (cup_radii[0] * c_scale, cup_radii[1] * c_scale)) & d
        disc_soft += d
        cup_soft += c
        cdrs.append(round(float(min(1.0, cup_radii[0] * c_scale / (disc_radii[0] * d_scale))), 2))
    to_png = {0: 0, 1: 64, 2: 128, 3: 191, 4: 255}
    disc_png = np.vectorize(to_png.get)(disc_soft.astype(int)).astype(np.uint8)
    cup_png = np.vectorize(to_png.get)(cup_soft.astype(int)).astype(np.uint8)
    return rgb, disc_png, cup_png, cdrs


def generate_fundus_like(
    out_dir: str | PathLike, n_images: int = 24, size: tuple[int, int] = (288, 320), seed: int = 0
) -> Path:
    """Write ``images/<id>.jpg``, ``masks/<id>_disc.png``, ``masks/<id>_cup.png`` and ``labels.csv`` (columns
    ``image, glaucoma, cdr_expert1..4, source_split``) under ``out_dir``; about 2/3 of the eyes are glaucomatous.

    Args:
        out_dir: output folder (created).
        n_images: number of images (>= 4).
        size: ``(height, width)`` in pixels.
        seed: random seed.

    Returns:
        ``out_dir`` as a Path.
    """
    if n_images < 4:
        raise ValueError(f"n_images must be >= 4, got {n_images}.")
    if min(size) < 64:
        raise ValueError(f"size must be at least 64 pixels per side, got {size}.")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n_test = max(1, n_images // 4)
    labels = (np.arange(n_images) % 3 != 0).astype(int)  # 2 of 3 glaucomatous, both classes in every quarter
    rows = []
    for i in range(n_images):
        case = f"fundus_{i:03d}"
        rgb, disc, cup, cdrs = _one_image(rng, size[0], size[1], bool(labels[i]))
        Image.fromarray(rgb).save(out / "images" / f"{case}.jpg", quality=95)
        Image.fromarray(disc).save(out / "masks" / f"{case}_disc.png")
        Image.fromarray(cup).save(out / "masks" / f"{case}_cup.png")
        split = "test" if i >= n_images - n_test else "train"
        rows.append([case, int(labels[i]), *cdrs, split])
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "glaucoma", *[f"cdr_expert{k + 1}" for k in range(N_EXPERTS)], "source_split"])
        writer.writerows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n_images", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(generate_fundus_like(args.out, args.n_images, seed=args.seed))


if __name__ == "__main__":
    main()
