"""Reliability diagrams (mean predicted probability against fraction of positives per bin) drawn with Pillow.

Pillow is a dependency of the package, matplotlib only a test extra: evaluation always writes its diagrams, on any
installation, without an optional import that could silently skip them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from .calibration import CALIBRATION_BINS, expected_calibration_error, reliability_bins

__all__ = ["draw_reliability_diagram"]

_SIZE, _LEFT, _RIGHT, _TOP, _BOTTOM = 480, 60, 20, 40, 60
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def draw_reliability_diagram(
    path: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str = "",
    n_bins: int = CALIBRATION_BINS,
) -> str:
    """Write a PNG reliability diagram of one or more probability sets; return its path.

    Each curve (name -> (positive-class probabilities, 0/1 labels)) is drawn as its non-empty bins' (mean
    probability, fraction of positives) points joined by lines, the first one also as bars of the fraction of
    positives per bin; the legend gives each curve's ECE and sample count. The diagonal is perfect calibration.

    Args:
        path: the PNG file to write (its folder is created).
        curves: name -> (probs, labels); at most four.
        title: the line above the plot.
        n_bins: number of equal-width bins.
    """
    if not curves or len(curves) > len(_COLOURS):
        raise ValueError(f"curves must hold 1 to {len(_COLOURS)} probability sets, got {len(curves)}.")
    img = Image.new("RGB", (_SIZE, _SIZE), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = _LEFT, _TOP, _SIZE - _RIGHT, _SIZE - _BOTTOM

    def xy(p: float, q: float) -> tuple[float, float]:
        return x0 + p * (x1 - x0), y1 - q * (y1 - y0)

    for t in np.linspace(0, 1, 6):
        draw.line([xy(t, 0), xy(t, 1)], fill=(230, 230, 230))
        draw.line([xy(0, t), xy(1, t)], fill=(230, 230, 230))
        draw.text((xy(t, 0)[0] - 8, y1 + 6), f"{t:.1f}", fill="black")
        draw.text((x0 - 30, xy(0, t)[1] - 6), f"{t:.1f}", fill="black")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(128, 128, 128), width=1)
    draw.text((x0 + (x1 - x0) / 2 - 70, y1 + 26), "mean predicted probability", fill="black")
    draw.text((4, y0 - 16), "fraction of positives", fill="black")
    draw.text((x0, 8), title, fill="black")
    for k, (name, (probs, labels)) in enumerate(curves.items()):
        colour = _COLOURS[k]
        mean_p, mean_y, counts = reliability_bins(probs, labels, n_bins)
        known = counts > 0
        if k == 0:
            edges = np.linspace(0, 1, n_bins + 1)
            for b in np.flatnonzero(known):
                draw.rectangle([xy(edges[b], mean_y[b]), xy(edges[b + 1], 0)], outline=(200, 210, 230))
        points = [xy(p, q) for p, q in zip(mean_p[known], mean_y[known])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        ece = expected_calibration_error(probs, labels, n_bins)
        draw.text((x0 + 8, y0 + 6 + 14 * k), f"{name}: ECE {ece:.3f} (n={int(counts.sum())})", fill=colour)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
