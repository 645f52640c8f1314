"""Per-image outputs of a fundus disc/cup + glaucoma inference run: masks, overlay, JSON and a CSV."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from PIL import Image
from scipy import ndimage

from .case_results import CaseResult, Measurement, PredictionWriter
from .prediction_table import write_prediction_csv

__all__ = ["NO_FUNDUS", "FundusPredictionWriter", "draw_contours"]

#: The result of a frame that is no fundus photograph (its flag and its prediction).
NO_FUNDUS = "no fundus image"

logger = logging.getLogger(__name__)


def draw_contours(rgb: np.ndarray, masks: list[np.ndarray], colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Draw the outline of each binary ``(H, W)`` mask on an ``(H, W, 3)`` uint8 image (line width ~ H/300)."""
    out = rgb.copy()
    width = max(1, round(rgb.shape[0] / 300))
    for mask, colour in zip(masks, colours):
        if not mask.any():
            continue
        edge = mask & ~ndimage.binary_erosion(mask, iterations=width)
        out[edge] = colour
    return out


class FundusPredictionWriter(PredictionWriter):
    """Write, per image, the disc and cup masks (PNG, 0/255, the input's size), an overlay PNG (disc outline in
    green, cup in blue) and a JSON, plus ``predictions.csv`` with every image's vCDR and glaucoma probabilities.

    Reads the batch image (``(B, 3, H, W)`` RGB scaled to [0, 1]) and the output of
    :class:`~common.inferers.DiscCropInferer`. An image whose disc was not detected, or whose disc mask is empty,
    is flagged in the ``flag`` column (never silently written as a normal result). A frame the inferer found to be
    no fundus photograph (``fundus_found`` 0: blank or near-uniform) gets :data:`NO_FUNDUS` as its only flag and as
    its prediction, no probabilities, no vCDR and empty masks.

    Each image is handed over in ``engine.state.case_results`` (:class:`~common.handlers.case_results.CaseResult`):
    the two masks named ``segments``, ``<cls_task>_probability`` (the fused score), the ratio ``vcdr`` on the second
    segment, the flags, and the other columns as details.

    Args:
        output_dir: folder of the outputs (one sub-folder per image).
        seg_task: key of the full-size disc/cup logits.
        cls_task: name of the classification task (keys ``cls_task``, ``<cls_task>_vcdr``, ``<cls_task>_fused``).
        threshold: probability threshold of masks and of the predicted class.
        image_key, case_key: batch keys of the image and the image id.
        class_names: names of the negative and the positive class.
        segments: names of the outer (disc) and inner (cup) segment, as reported in DICOM and by servers.
        series_key: batch key of the DICOM source (handed over with the result).
    """

    spatial_dims = 2

    def __init__(
        self,
        output_dir: str,
        seg_task: str = "seg",
        cls_task: str = "cls",
        threshold: float = 0.5,
        image_key: str = "image",
        case_key: str = "case",
        class_names: tuple[str, str] = ("negative", "positive"),
        segments: tuple[str, str] = ("disc", "cup"),
        series_key: str = "dicom_series",
    ) -> None:
        super().__init__(case_key=case_key, series_key=series_key)
        if len(segments) != 2:
            raise ValueError(f"segments must name the outer and the inner segment, got {list(segments)}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.output_dir, self.seg_task, self.cls_task, self.threshold = str(output_dir), seg_task, cls_task, threshold
        self.image_key, self.class_names, self.segments = image_key, tuple(class_names), list(segments)
        self.rows: list[dict[str, Any]] = []

    @property
    def segment_names(self) -> list[str]:
        return list(self.segments)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write_csv)

    def _prob(self, pred: dict, key: str, i: int) -> float:
        value = pred.get(key)
        if value is None or torch.as_tensor(value).numel() == 0:
            return float("nan")
        return float(torch.sigmoid(torch.as_tensor(value).detach().float().reshape(-1)[i]))

    def __call__(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if isinstance(output, list):
            raise ValueError("FundusPredictionWriter needs a batch output dict: set decollate=False on the engine.")
        pred = output[Keys.PRED]
        seg = pred[self.seg_task].detach().float().cpu()
        images = batch[self.image_key].detach().float().cpu()
        cases = list(batch.get(self.case_key) or [f"image{len(self.rows) + i}" for i in range(images.shape[0])])
        sources = self.sources(batch, len(cases))
        for i, case in enumerate(cases):
            rgb = (images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            if seg.shape[1] >= 2:
                disc = (torch.sigmoid(seg[i, 0]) >= self.threshold).numpy()
                cup = (torch.sigmoid(seg[i, 1]) >= self.threshold).numpy() & disc
            else:
                disc = cup = np.zeros(rgb.shape[:2], dtype=bool)
            folder = os.path.join(self.output_dir, str(case))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(disc.astype(np.uint8) * 255).save(os.path.join(folder, f"{case}_disc.png"))
            Image.fromarray(cup.astype(np.uint8) * 255).save(os.path.join(folder, f"{case}_cup.png"))
            overlay = draw_contours(rgb, [disc, cup], [(0, 255, 0), (0, 128, 255)])
            Image.fromarray(overlay).save(os.path.join(folder, f"{case}_overlay.png"))
            found = bool(float(torch.as_tensor(pred.get("disc_found", torch.ones(len(cases)))).reshape(-1)[i]))
            fundus = bool(float(torch.as_tensor(pred.get("fundus_found", torch.ones(len(cases)))).reshape(-1)[i]))
            if not fundus:
                disc = cup = np.zeros_like(disc)
                std = float(torch.as_tensor(pred.get("fundus_std", torch.zeros(len(cases)))).reshape(-1)[i])
                flags = [f"{NO_FUNDUS} (blank or near-uniform frame: green-channel std {std:.4f})"]
            else:
                flags = [] if found else ["disc not detected by the locator"]
                flags += [] if disc.any() else ["no disc segmented"]
            vcdr = float(torch.as_tensor(pred.get("vcdr", torch.full((len(cases),), math.nan))).reshape(-1)[i])
            p_fused = self._prob(pred, f"{self.cls_task}_fused", i)
            p_head, p_vcdr = self._prob(pred, self.cls_task, i), self._prob(pred, f"{self.cls_task}_vcdr", i)
            if not fundus:
                vcdr = p_fused = p_head = p_vcdr = math.nan
                prediction = NO_FUNDUS
            else:
                prediction = self.class_names[int(p_fused >= self.threshold)] if not math.isnan(p_fused) else ""
            row: dict[str, Any] = {
                "case": str(case),
                "vcdr": None if math.isnan(vcdr) else round(vcdr, 4),
                f"{self.cls_task}_probability": None if math.isnan(p_fused) else round(p_fused, 6),
                f"{self.cls_task}_probability_head": round(p_head, 6) if fundus else None,
                f"{self.cls_task}_probability_vcdr": round(p_vcdr, 6) if fundus else None,
                f"{self.cls_task}_prediction": prediction,
                "disc_pixels": int(disc.sum()),
                "cup_pixels": int(cup.sum()),
                "flag": "; ".join(flags),
                "disc_mask": os.path.join(str(case), f"{case}_disc.png"),
                "cup_mask": os.path.join(str(case), f"{case}_cup.png"),
                "overlay": os.path.join(str(case), f"{case}_overlay.png"),
            }
            if flags:
                logger.warning(f"image '{case}': {'; '.join(flags)}; its result is flagged in predictions.csv.")
            with open(os.path.join(folder, f"{case}_{self.cls_task}.json"), "w") as f:
                json.dump(row, f, indent=2)
            self.rows.append(row)
            files = ("disc_mask", "cup_mask", "overlay")
            self.publish(engine, CaseResult(
                case=str(case),
                source=sources[i],
                segments=list(self.segments),
                masks=np.stack([disc, cup]),
                measurements={f"{self.cls_task}_probability": Measurement(
                    None if math.isnan(p_fused) else p_fused, "1", f"probability of '{self.class_names[1]}'")},
                segment_measurements={self.segments[1]: {"vcdr": Measurement(row["vcdr"], "{ratio}",
                                                                               "vertical cup-to-disc ratio")}},
                flags=flags,
                details={k: v for k, v in row.items() if k not in ("case", "flag", *files)},
            ))

    def _write_csv(self, engine: Engine) -> None:
        write_prediction_csv(self.output_dir, self.rows)
        logger.info(f"{len(self.rows)} image prediction(s) written to {self.output_dir}")
