"""Per-task metrics (ignite) and case-level bootstrap confidence intervals."""

from __future__ import annotations

from .bootstrap import case_bootstrap_ci
from .classification import BinaryTaskMetrics, balanced_accuracy, roc_auc
from .counts import SampleCounts
from .cup_disc import VCDRMetrics, fit_vcdr_logistic, vertical_cdr
from .factors import FactorMetrics, mae, rmse
from .output_dict import OutputDictMetric
from .reconstruction import MaskedMSE
from .segmentation import SegmentationTaskMetrics

__all__ = [
    "BinaryTaskMetrics",
    "FactorMetrics",
    "MaskedMSE",
    "OutputDictMetric",
    "SampleCounts",
    "SegmentationTaskMetrics",
    "VCDRMetrics",
    "balanced_accuracy",
    "case_bootstrap_ci",
    "fit_vcdr_logistic",
    "mae",
    "rmse",
    "roc_auc",
    "vertical_cdr",
]
