"""Class weights for imbalanced binary labels."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["binary_pos_weight"]


def binary_pos_weight(labels: Iterable[float], missing_value: float = -1) -> torch.Tensor:
    """``pos_weight`` for ``BCEWithLogitsLoss`` that balances the classes: ``n_negative / n_positive``.

    Unknown labels (``missing_value``) are ignored. With one class absent the weight is 1 (nothing to balance).

    Returns:
        a 1-element float tensor.
    """
    values = [float(v) for v in labels if float(v) != float(missing_value)]
    bad = sorted({v for v in values if v not in (0.0, 1.0)})
    if bad:
        raise ValueError(f"labels must be 0, 1 or missing_value={missing_value}; got {bad}.")
    n_pos = sum(1 for v in values if v == 1.0)
    n_neg = len(values) - n_pos
    return torch.tensor([n_neg / n_pos if n_pos and n_neg else 1.0])
