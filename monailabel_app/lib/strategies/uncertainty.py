"""Active learning by the model's uncertainty over all its tasks.

For each unlabelled study the bundle's evaluator runs once (the infer task's :meth:`evaluate`, with the raw network
outputs kept) and the study scores the mean of its tasks' uncertainties, each in [0, 1]:

- a segmentation output (a network output with spatial axes, ``(batch, channel, *spatial)``): the mean binary
  entropy (bits) of its per-channel probabilities (a sigmoid of the logits; outputs already in [0, 1] are taken as
  probabilities);
- a classification probability of the hand-over (a ``CaseResult`` measurement named ``*_probability`` with unit
  ``"1"``): the margin ``1 - |2p - 1|`` (1 at p = 0.5, 0 at p = 0 or 1).

The study with the highest score is returned; studies the model cannot read (another modality) are skipped. Scores
are cached per study and model file (path, size, modification time), so a retrained model rescores everything.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

__all__ = ["TaskUncertainty", "segmentation_entropy", "classification_margin", "task_uncertainties"]


def segmentation_entropy(output: np.ndarray) -> float:
    """Mean binary entropy in bits (0: certain, 1: p = 0.5 everywhere) of a ``(batch, channel, *spatial)`` output
    of logits (or of probabilities when every value is in [0, 1])."""
    x = np.asarray(output, dtype=np.float64)
    p = x if x.size and x.min() >= 0.0 and x.max() <= 1.0 else 1.0 / (1.0 + np.exp(-x))
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(np.mean(-(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))))


def classification_margin(probability: float) -> float:
    """``1 - |2p - 1|``: 1 for p = 0.5, 0 for a certain answer."""
    return float(1.0 - abs(2.0 * float(probability) - 1.0))


def _spatial_outputs(pred: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The outputs with spatial axes (ndim >= 4) of a raw network output (a tensor, a dict or a sequence)."""
    if isinstance(pred, dict):
        out: dict[str, np.ndarray] = {}
        for key, value in pred.items():
            out.update(_spatial_outputs(value, f"{prefix}{key}."))
        return out
    if isinstance(pred, (list, tuple)):
        out = {}
        for k, value in enumerate(pred):
            out.update(_spatial_outputs(value, f"{prefix}{k}."))
        return out
    if isinstance(pred, np.ndarray) and pred.ndim >= 4 and np.issubdtype(pred.dtype, np.floating):
        return {prefix.rstrip(".") or "output": pred}
    return {}


def task_uncertainties(result: Any, outputs: list) -> dict[str, float]:
    """Per task, its uncertainty in [0, 1]: ``<output>_entropy`` for segmentation outputs, ``<name>_margin`` for
    the hand-over's probabilities."""
    scores: dict[str, float] = {}
    for pred in outputs:
        for name, value in _spatial_outputs(pred).items():
            scores[f"{name}_entropy"] = segmentation_entropy(value)
    for name, m in result.measurements.items():
        if name.endswith("_probability") and m.unit == "1" and m.finite and 0.0 <= float(m.value) <= 1.0:
            scores[f"{name[: -len('_probability')]}_margin"] = classification_margin(float(m.value))
    return scores


class TaskUncertainty(Strategy):
    """Picks the unlabelled study the model is least sure of, over all its tasks (see the module docstring).

    Args:
        infer_task: the bundle's :class:`~lib.infers.BundleEvaluatorInferTask`.
        max_studies: score at most this many unlabelled studies per request (request ``max_studies``); 0 = all.
    """

    def __init__(self, infer_task: Any, max_studies: int = 0) -> None:
        self.infer_task = infer_task
        self.max_studies = int(max_studies)
        self._cache: dict[tuple, dict[str, Any]] = {}
        super().__init__(f"Unlabelled study with the highest uncertainty of {infer_task.bundle_dir.name} "
                         "(mean of segmentation entropy and classification margins)")

    def _model_key(self) -> tuple:
        path = self.infer_task.get_path()
        st = os.stat(path) if os.path.exists(path) else None
        return (path, st.st_size, st.st_mtime_ns) if st else (path,)

    def score(self, image: str) -> dict[str, Any]:
        """``{"uncertainty": mean, "tasks": {task: value}}`` of one image (cached per model file)."""
        key = (image, *self._model_key())
        if key not in self._cache:
            outputs: list = []
            result = self.infer_task.evaluate(image, outputs=outputs)
            tasks = task_uncertainties(result, outputs)
            if not tasks:
                raise ValueError(f"image {image}: the model gave no segmentation output and no probability to score.")
            self._cache[key] = {"uncertainty": float(np.mean(list(tasks.values()))), "tasks": tasks}
        return self._cache[key]

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        ids = sorted(datastore.get_unlabeled_images())
        limit = int(request.get("max_studies", self.max_studies))
        if limit > 0:
            ids = ids[:limit]
        scored: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        for image_id in ids:
            try:
                scored[image_id] = self.score(datastore.get_image_uri(image_id))
            except Exception as e:  # a study this model cannot read (another modality): not a candidate
                skipped[image_id] = f"{type(e).__name__}: {e}"
                logger.info(f"{self.infer_task.bundle_dir.name} uncertainty: skipped {image_id}: {skipped[image_id]}")
        if not scored:
            logger.info(f"{self.infer_task.bundle_dir.name} uncertainty: no unlabelled study to score "
                        f"({len(ids)} unlabelled, {len(skipped)} unreadable by the model)")
            return {}
        best = max(scored, key=lambda i: (scored[i]["uncertainty"], i))
        return {"id": best, **scored[best], "scores": {i: s["uncertainty"] for i, s in scored.items()},
                "skipped": sorted(skipped)}
