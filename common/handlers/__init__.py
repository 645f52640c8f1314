"""Ignite handlers: per-task logging, metrics.json, prediction writers."""

from __future__ import annotations

from .atomic_checkpoint import AtomicCheckpointSaver
from .case_results import CaseResult, CaseResultConsumer, Measurement, PredictionWriter, collect_case_results, label_map
from .factor_predictions import FactorPredictionWriter
from .fundus_predictions import FundusPredictionWriter, draw_contours
from .metrics_json import MetricsJSONWriter
from .slice_predictions import SlicePredictionWriter, overlay_heatmap
from .task_affinity import TaskAffinity
from .task_logging import TaskEpochSummary, TaskProgressBar, task_scalars
from .volume_predictions import SegClassPredictionWriter
