"""Per-case outputs of a segmentation + classification inference run, in the input image's space."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd
from monai.utils import CommonKeys as Keys

from ..transforms.seg_regions import regions_to_label_map
from .case_results import CaseResult, Measurement, PredictionWriter
from .prediction_table import write_prediction_csv

__all__ = ["SegClassPredictionWriter"]

logger = logging.getLogger(__name__)


class SegClassPredictionWriter(PredictionWriter):
    """Writes, per case, ``<case>/<case>_seg.nii.gz`` and ``<case>/<case>_<cls_task>.json``, and one
    ``predictions.csv`` with a row per case.

    The segmentation is a label map (0 background, ``k`` = the ``k``-th of ``regions`` being the innermost region
    holding the voxel) moved back to the input image's grid by inverting ``transform`` (e.g. ``Orientationd``), so it
    overlays the input files. The CSV and JSON hold the class probability, the predicted class name, and each
    region's volume in voxels and in mm^3 (each region's own mask, overlapping regions included; mm^3 from the
    input's voxel spacing, so for files without a real spacing, an identity affine, mm^3 equals voxels).
    Each case is handed over in ``engine.state.case_results`` (:class:`~common.handlers.case_results.CaseResult`:
    every region's mask in the input space, ``<cls_task>_probability``, each region's ``volume`` in mm3).

    Args:
        output_dir: output folder (created).
        transform: the preprocessing applied to the image (inverted on the label map).
        regions: region names, one per segmentation channel.
        seg_task, cls_task: keys of the segmentation and classification logits in the prediction dict.
        class_names: names of the negative and the positive class.
        threshold: probability threshold for masks and the predicted class.
        image_key, case_key: keys of the image and the case ids in the batch.
        series_key: batch key of the DICOM source (handed over with the result).
    """

    spatial_dims = 3

    def __init__(
        self,
        output_dir: str,
        transform: Any,
        regions: Sequence[str],
        seg_task: str = "seg",
        cls_task: str = "cls",
        class_names: Sequence[str] = ("negative", "positive"),
        threshold: float = 0.5,
        image_key: str = Keys.IMAGE,
        case_key: str = "case",
        series_key: str = "dicom_series",
    ) -> None:
        super().__init__(case_key=case_key, series_key=series_key)
        if len(class_names) != 2:
            raise ValueError(f"class_names must name 2 classes, got {list(class_names)}.")
        self.output_dir, self.transform, self.regions = str(output_dir), transform, list(regions)
        self.seg_task, self.cls_task, self.class_names = seg_task, cls_task, list(class_names)
        self.threshold, self.image_key = threshold, image_key
        self.inverter = Invertd(keys="pred", transform=transform, orig_keys=image_key, nearest_interp=True)
        self.rows: list[dict[str, Any]] = []

    @property
    def segment_names(self) -> list[str]:
        return list(self.regions)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write_csv)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _to_input_space(self, label_map: torch.Tensor, image: MetaTensor) -> MetaTensor:
        pred = MetaTensor(label_map[None].float(), affine=image.affine, meta=dict(image.meta))
        pred.applied_operations = list(image.applied_operations)
        return self.inverter({"pred": pred, self.image_key: image})["pred"]

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        batch = engine.state.batch
        if isinstance(output, list):
            raise ValueError("SegClassPredictionWriter needs a batch output dict: set decollate=False on the engine.")
        seg = output[Keys.PRED][self.seg_task].detach().float().cpu()
        probs = torch.sigmoid(output[Keys.PRED][self.cls_task].detach().float().reshape(seg.shape[0], -1)).cpu()
        images = decollate_batch(batch[self.image_key], detach=True)
        cases = list(batch.get(self.case_key) or [f"case{len(self.rows) + i}" for i in range(seg.shape[0])])
        sources = self.sources(batch, len(cases))
        for i, case in enumerate(cases):
            masks = torch.sigmoid(seg[i]) >= self.threshold
            label_map = regions_to_label_map(masks)
            out = self._to_input_space(label_map, images[i])
            data = np.asarray(out[0].cpu().numpy()).round().astype(np.uint8)
            affine = np.asarray(out.affine.cpu().numpy(), dtype=np.float64)
            folder = os.path.join(self.output_dir, str(case))
            os.makedirs(folder, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), os.path.join(folder, f"{case}_seg.nii.gz"))
            voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
            p = float(probs[i, 0])
            row: dict[str, Any] = {
                "case": str(case),
                f"{self.cls_task}_probability": round(p, 6),
                f"{self.cls_task}_prediction": self.class_names[int(p >= self.threshold)],
            }
            for k, name in enumerate(self.regions, start=1):
                n = int(masks[k - 1].sum())
                row[f"{name}_voxels"] = n
                row[f"{name}_mm3"] = round(n * voxel_mm3, 3)
            row["segmentation"] = os.path.join(str(case), f"{case}_seg.nii.gz")
            with open(os.path.join(folder, f"{case}_{self.cls_task}.json"), "w") as f:
                json.dump(row, f, indent=2)
            self.rows.append(row)
            # region k holds the voxels labelled >= k (regions listed outermost first, see regions_to_label_map)
            region_masks = np.stack([data >= k for k in range(1, len(self.regions) + 1)])
            self.publish(engine, CaseResult(
                case=str(case),
                source=sources[i],
                segments=list(self.regions),
                masks=region_masks,
                affine=affine,
                measurements={
                    f"{self.cls_task}_probability": Measurement(p, "1", f"probability of '{self.class_names[1]}'")
                },
                segment_measurements={
                    name: {"volume": Measurement(row[f"{name}_mm3"], "mm3")} for name in self.regions
                },
                details={k: v for k, v in row.items() if k not in ("case", "segmentation")},
            ))

    def _write_csv(self, engine: Engine) -> None:
        write_prediction_csv(self.output_dir, self.rows)
        logger.info(f"{len(self.rows)} case prediction(s) written to {self.output_dir}")
