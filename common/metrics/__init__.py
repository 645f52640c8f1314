"""Per-task metrics (ignite) and case-level bootstrap confidence intervals."""

from __future__ import annotations

from .bootstrap import case_bootstrap_ci
from .classification import BinaryTaskMetrics, roc_auc
from .counts import SampleCounts
from .reconstruction import MaskedMSE
