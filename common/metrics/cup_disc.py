"""Cup-to-disc measurements: vertical cup-to-disc ratio (vCDR), its error, and a vCDR-based glaucoma score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.utils import CommonKeys as Keys

from .output_dict import OutputDictMetric

__all__ = ["VCDRMetrics", "fit_vcdr_logistic", "vertical_cdr"]


def vertical_cdr(disc: np.ndarray | torch.Tensor, cup: np.ndarray | torch.Tensor) -> float:
    """Vertical cup-to-disc ratio of binary ``(H, W)`` masks (rows are vertical): cup height / disc height.

    Heights are row extents (first to last row holding the structure). An empty cup gives 0; an empty disc nan.
    """
    disc_rows = np.nonzero(np.asarray(disc, dtype=bool).any(axis=-1))[0]
    if disc_rows.size == 0:
        return float("nan")
    cup_rows = np.nonzero(np.asarray(cup, dtype=bool).any(axis=-1))[0]
    if cup_rows.size == 0:
        return 0.0
    return float((cup_rows[-1] - cup_rows[0] + 1) / (disc_rows[-1] - disc_rows[0] + 1))


def fit_vcdr_logistic(
    records: Sequence[dict], cdr_key: str = "cdr", label_key: str = "label", l2: float = 1e-3, iters: int = 50
) -> list[float]:
    """Fit ``logit P(label) = slope * cdr + intercept`` on training records (Newton's method, small L2 penalty).

    Pascal et al. (2022) fuse a classifier with a logistic regression on the vertical cup-to-disc ratio; fitting it
    on the training records' reference CDRs keeps the test labels out of it. Records without a finite CDR or a
    0/1 label are skipped.

    Returns:
        ``[slope, intercept]``.

    Raises:
        ValueError: fewer than 2 usable records, or only one class among them.
    """
    pairs = [
        (float(r[cdr_key]), float(r[label_key]))
        for r in records
        if r.get(cdr_key) is not None and r.get(label_key) is not None
        and np.isfinite(float(r[cdr_key])) and float(r[label_key]) in (0.0, 1.0)
    ]
    if len(pairs) < 2 or len({y for _, y in pairs}) < 2:
        raise ValueError(
            f"records must hold at least one '{label_key}' = 0 and one = 1 with a finite '{cdr_key}' to fit the vCDR "
            f"logistic model; got {len(pairs)} usable record(s)."
        )
    x = np.array([[c, 1.0] for c, _ in pairs])
    y = np.array([t for _, t in pairs])
    w = np.zeros(2)
    penalty = np.diag([l2, 0.0]) * len(y)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + penalty @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return [float(w[0]), float(w[1])]


class VCDRMetrics(OutputDictMetric):
    """Mean absolute error (and RMSE) of the predicted vertical cup-to-disc ratio against a reference CDR.

    Reads ``output["pred"][pred_key]`` (``(B,)`` vCDRs, nan where no disc was segmented) and
    ``output["label"][label_key]`` (reference CDR, nan/missing skipped). An image without a predicted vCDR but with
    a reference counts with error ``|reference|`` (a predicted ratio of 0), so failures are not dropped.
    ``compute`` returns ``{prefix}_mae``, ``{prefix}_rmse``, ``{prefix}_n``; :meth:`details` every image's
    ``{prefix}_label``, ``{prefix}_pred`` and ``{prefix}_mae`` (its absolute error as counted, NaN without a reference).

    Args:
        pred_key: key of the predicted vCDR in the prediction dict.
        label_key: key of the reference CDR in the targets dict.
        prefix: key prefix.
    """

    def __init__(
        self, pred_key: str = "vcdr", label_key: str = "cdr", prefix: str = "vcdr", device: str | torch.device = "cpu"
    ) -> None:
        self.pred_key, self.label_key, self.prefix = pred_key, label_key, prefix
        super().__init__(output_transform=lambda x: x, device=device, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._errors: list[np.ndarray] = []
        self._refs: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        pred = torch.as_tensor(output[Keys.PRED][self.pred_key]).detach().float().reshape(-1).cpu().numpy()
        ref = torch.as_tensor(output[Keys.LABEL][self.label_key]).detach().float().reshape(-1).cpu().numpy()
        if pred.size != ref.size:
            raise ValueError(f"'{self.pred_key}': {pred.size} predictions for {ref.size} references.")
        known = np.isfinite(ref)
        self._errors.append(np.abs(np.nan_to_num(pred[known], nan=0.0) - ref[known]))
        self._refs.append(ref.astype(float))
        self._preds.append(pred.astype(float))

    def details(self, name: str) -> dict[str, np.ndarray]:
        ref = np.concatenate(self._refs) if self._refs else np.zeros(0)
        pred = np.concatenate(self._preds) if self._preds else np.zeros(0)
        return {
            f"{self.prefix}_label": ref,
            f"{self.prefix}_pred": pred,
            f"{self.prefix}_mae": np.abs(np.nan_to_num(pred, nan=0.0) - ref),
        }

    def compute(self) -> dict[str, float]:
        err = np.concatenate(self._errors) if self._errors else np.zeros(0)
        nan = float("nan")
        return {
            f"{self.prefix}_mae": float(err.mean()) if err.size else nan,
            f"{self.prefix}_rmse": float(np.sqrt((err**2).mean())) if err.size else nan,
            f"{self.prefix}_n": int(err.size),
        }
