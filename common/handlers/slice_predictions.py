"""Per-slice classification outputs of an inference run: a CSV and attention-map overlay PNGs."""

from __future__ import annotations

import csv
import logging
import os
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from PIL import Image

from ..networks.parallel import unwrap_parallel
from ..networks.vit_mim import ViTEncoder, attention_rollout
from .case_results import CaseResult, Measurement, PredictionWriter

__all__ = ["SlicePredictionWriter", "overlay_heatmap"]

logger = logging.getLogger(__name__)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the grey ``image`` (H, W) beside it blended with ``heat`` (H, W in [0, 1]) in a jet map."""
    lo, hi = np.percentile(image, (1, 99))
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    h = np.clip(heat, 0, 1)
    jet = np.stack([np.clip(1.5 - np.abs(4 * h - k), 0, 1) for k in (3, 2, 1)], -1)
    g3 = np.repeat(grey[..., None], 3, -1)
    blend = (1 - alpha) * g3 + alpha * jet
    return (np.concatenate([g3, blend], axis=1) * 255).astype(np.uint8)


class SlicePredictionWriter(PredictionWriter):
    """Writes ``predictions.csv`` (case, slice, probability, predicted class, label) and attention overlays.

    When the run completes, each case (volume) is handed over in ``engine.state.case_results``
    (:class:`~common.handlers.case_results.CaseResult`, no masks): ``measurement`` = the highest slice probability,
    and the same measurement per slice (slice ``k`` = the ``k``-th source image in slice order).

    Overlays (``overlays/<case>_slice<k>_p<prob>.png``: the slice, and the slice with the CLS attention rollout)
    are kept for the ``n_overlays`` slices with the highest tumour probability. Attention maps need a network whose
    ``encoder`` is a :class:`ViTEncoder` built with ``save_attn=True``; otherwise only the CSV is written.

    Args:
        output_dir: output folder (created).
        task: key of the classification logits in the prediction dict.
        n_overlays: number of overlay PNGs (0: none).
        overlay_channel: image channel drawn under the heat map (e.g. the FLAIR channel).
        threshold: probability threshold of the predicted class.
        case_key, slice_key, label_key: keys in the targets dict (label optional).
        filename: CSV file name.
        measurement: name of the handed-over probability (default ``<task>_probability``).
        series_key: batch key of the DICOM source of each slice (handed over with the case's result).
    """

    def __init__(
        self,
        output_dir: str,
        task: str = "cls",
        n_overlays: int = 16,
        overlay_channel: int = 0,
        threshold: float = 0.5,
        case_key: str = "case",
        slice_key: str = "slice",
        label_key: str = Keys.LABEL,
        filename: str = "predictions.csv",
        measurement: str | None = None,
        series_key: str = "dicom_series",
    ) -> None:
        super().__init__(case_key=case_key, series_key=series_key)
        if n_overlays < 0:
            raise ValueError(f"n_overlays must be >= 0, got {n_overlays}.")
        self.output_dir, self.task, self.n_overlays = str(output_dir), task, n_overlays
        self.overlay_channel, self.threshold = overlay_channel, threshold
        self.slice_key, self.label_key, self.filename = slice_key, label_key, filename
        self.measurement = measurement or f"{task}_probability"

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self._rows: list[dict[str, Any]] = []
        self._best: list[tuple[float, str, int, np.ndarray, np.ndarray]] = []
        self._sources: dict[str, str | None] = {}

    @staticmethod
    def _encoder(engine: Engine) -> ViTEncoder | None:
        net = unwrap_parallel(engine.network)
        enc = getattr(net, "encoder", None)
        if isinstance(enc, ViTEncoder) and all(b.attn.save_attn for b in enc.blocks):
            return enc
        return None

    def _update(self, engine: Engine) -> None:
        out = engine.state.output
        probs = torch.sigmoid(out[Keys.PRED][self.task].detach().float().reshape(-1)).cpu().numpy()
        targets = out[Keys.LABEL]
        cases = list(targets[self.case_key])
        slices = [int(s) for s in torch.as_tensor(targets[self.slice_key]).reshape(-1).tolist()]
        labels = targets.get(self.label_key)
        labels = torch.as_tensor(labels).reshape(-1).tolist() if labels is not None else [None] * len(cases)
        for c, source in zip(cases, self.sources(engine.state.batch or {}, len(cases))):
            self._sources[str(c)] = self._sources.get(str(c)) or source
        for c, s, p, y in zip(cases, slices, probs, labels):
            known = y is not None and y >= 0
            self._rows.append(
                {"case": c, "slice": s, "probability": f"{p:.6f}", "predicted": int(p >= self.threshold),
                 "label": int(y) if known else ""}
            )
        enc = self._encoder(engine) if self.n_overlays else None
        if enc is None:
            return
        heat = attention_rollout(enc).unsqueeze(1)
        images = out[Keys.IMAGE].detach().float().cpu()
        heat = torch.nn.functional.interpolate(heat.cpu(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        for i, (c, s, p) in enumerate(zip(cases, slices, probs)):
            if len(self._best) < self.n_overlays or p > self._best[-1][0]:
                self._best.append((float(p), str(c), s, images[i, self.overlay_channel].numpy(), heat[i, 0].numpy()))
                self._best.sort(key=lambda t: -t[0])
                del self._best[self.n_overlays :]

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["case", "slice", "probability", "predicted", "label"])
            writer.writeheader()
            writer.writerows(self._rows)
        if self._best:
            odir = os.path.join(self.output_dir, "overlays")
            os.makedirs(odir, exist_ok=True)
            for p, c, s, img, heat in self._best:
                # display convention: rows = anterior-posterior, flipped so anterior is up
                pic = Image.fromarray(overlay_heatmap(np.rot90(img), np.rot90(heat)))
                scale = max(1, 256 // max(img.shape))
                pic = pic.resize((pic.width * scale, pic.height * scale), Image.BILINEAR)
                pic.save(os.path.join(odir, f"{c}_slice{s:03d}_p{p:.2f}.png"))
        logger.info(f"{len(self._rows)} slice predictions written to {path}; {len(self._best)} overlays")
        by_case: dict[str, dict[int, float]] = {}
        for row in self._rows:
            by_case.setdefault(str(row["case"]), {})[int(row["slice"])] = float(row["probability"])
        for case, probs in by_case.items():
            self.publish(engine, CaseResult(
                case=case,
                source=self._sources.get(case),
                measurements={self.measurement: Measurement(max(probs.values()), "1", "highest slice probability")},
                image_measurements=[(k, {self.measurement: Measurement(p, "1")}) for k, p in sorted(probs.items())],
                details={"slices": len(probs), "positive_slices": sum(p >= self.threshold for p in probs.values())},
            ))
