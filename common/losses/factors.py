"""Per-factor losses of a risk-factor table, each over the samples whose value of that factor is known."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.factors import Factor, FactorTable

__all__ = ["MaskedFactorLoss"]


class MaskedFactorLoss(nn.Module):
    """``{factor: loss}`` for a network returning ``{factor: (B, 1)}`` and targets ``(B, n_factors)`` with NaN
    for missing values.

    Each factor's loss averages over the samples where that factor is known only, so a sample with 3 of 15
    values trains those 3 factors; a factor with no known value in the batch has no entry. Regression
    predictions are in original units and are compared on the table's scale, ``(y - center) / scale`` (L1,
    MSE or Huber); binary predictions are logits (BCE, with the factor's ``pos_weight``). Combining the losses
    is the job of a :class:`common.weighting.Weighting` (SePL: the unweighted sum, ``ew``).

    Args:
        factors: the factor table (or its config list of dicts).
        target_key: key of the ``(B, n_factors)`` values in the targets dict.
        pos_weight: factor name -> positive-class weight for BCE (e.g. from
            :func:`common.data.factor_pos_weights`); default 1.
    """

    def __init__(
        self,
        factors: FactorTable | Iterable[Mapping[str, Any]],
        target_key: str = "factors",
        pos_weight: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.table = FactorTable(factors)
        self.target_key = target_key
        pos_weight = dict(pos_weight or {})
        unknown = sorted(set(pos_weight) - set(self.table.names))
        if unknown:
            raise ValueError(f"pos_weight names factors {unknown} that are not in the table {self.table.names}.")
        self.pos_weight = {k: float(v) for k, v in pos_weight.items()}

    @property
    def task_names(self) -> list[str]:
        return self.table.names

    def _loss(self, factor: Factor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if factor.is_binary:
            weight = self.pos_weight.get(factor.name)
            pw = None if weight is None else torch.tensor(weight, dtype=pred.dtype, device=pred.device)
            return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pw)
        pred, target = (pred - factor.center) / factor.scale, (target - factor.center) / factor.scale
        if factor.loss == "mse":
            return F.mse_loss(pred, target)
        if factor.loss == "huber":
            return F.smooth_l1_loss(pred, target)
        return F.l1_loss(pred, target)

    def forward(
        self, preds: Mapping[str, torch.Tensor], targets: Mapping[str, Any], tasks: Collection[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses of the factors in ``tasks`` (default all) that have a known value in the batch."""
        if self.target_key not in targets:
            raise ValueError(f"targets has no '{self.target_key}'; keys: {sorted(targets)}.")
        values = torch.as_tensor(targets[self.target_key])
        if values.ndim != 2 or values.shape[1] != len(self.table):
            raise ValueError(
                f"targets['{self.target_key}'] must be (batch, {len(self.table)}) for factors {self.table.names}, "
                f"got shape {tuple(values.shape)}."
            )
        out: dict[str, torch.Tensor] = {}
        for k, factor in enumerate(self.table):
            if tasks is not None and factor.name not in tasks:
                continue
            if factor.name not in preds:
                raise ValueError(f"preds has no output for factor '{factor.name}'; outputs: {sorted(preds)}.")
            pred = preds[factor.name].reshape(-1)
            target = values[:, k].to(device=pred.device, dtype=pred.dtype)
            known = torch.isfinite(target)
            if not bool(known.any()):
                continue
            out[factor.name] = self._loss(factor, pred[known], target[known])
        return out
