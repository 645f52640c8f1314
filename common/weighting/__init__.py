"""Loss-weighting and gradient methods for multi-task training, one file each, chosen by name."""

from __future__ import annotations

from .base import WEIGHTINGS, GradientWeighting, Weighting, get_weighting, register_weighting
from .cagrad import CAGrad, project_simplex, solve_cagrad_weights
from .dwa import DynamicWeightAverage
from .ew import EqualWeighting
from .famo import FAMO
from .gradnorm import GradNorm
from .imtl import IMTL
from .pcgrad import PCGrad
from .uw import UncertaintyWeighting

__all__ = [
    "FAMO",
    "IMTL",
    "WEIGHTINGS",
    "CAGrad",
    "DynamicWeightAverage",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "PCGrad",
    "UncertaintyWeighting",
    "Weighting",
    "get_weighting",
    "project_simplex",
    "register_weighting",
    "solve_cagrad_weights",
]
