"""Loss-weighting and gradient methods for multi-task training, chosen by name.

The project's own methods live one per file (DWA, FAMO, GradNorm, IMTL); TorchJD's aggregators and scalarizers
(UPGrad, MGDA, PCGrad, CAGrad, UW, EW, ...) are registered from the tables of :mod:`.torchjd_adaptor`.
"""

from __future__ import annotations

from .base import WEIGHTINGS, GradientWeighting, Weighting, get_weighting, register_weighting
from .dwa import DynamicWeightAverage
from .famo import FAMO
from .gradnorm import GradNorm
from .imtl import IMTL
from .torchjd_adaptor import (
    AGGREGATORS,
    SCALARIZERS,
    AggregatorWeighting,
    CAGrad,
    EqualWeighting,
    PCGrad,
    ScalarizerWeighting,
    UncertaintyWeighting,
    UPGrad,
)

__all__ = [
    "AGGREGATORS",
    "FAMO",
    "IMTL",
    "SCALARIZERS",
    "WEIGHTINGS",
    "AggregatorWeighting",
    "CAGrad",
    "DynamicWeightAverage",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "PCGrad",
    "ScalarizerWeighting",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighting",
    "get_weighting",
    "register_weighting",
]
