"""Ignite handlers: per-task logging, metrics.json, checkpoints and resuming, weight EMA, the training-run lock, checked
model loading, per-case metrics, prediction writers, DICOM results
and PACS export."""

from __future__ import annotations

from .atomic_checkpoint import AtomicCheckpointSaver, settings_path
from .calibration_fitter import CalibrationFitter
from .case_results import (
    CaseResult,
    CaseResultConsumer,
    Measurement,
    PredictionWriter,
    collect_case_results,
    label_map,
)
from .checked_loader import CheckedCheckpointLoader, check_model_settings, read_training_json
from .dicom_results import DicomResultWriter, read_dicom_source, write_case_result
from .ema import EMAWeights
from .factor_predictions import FactorPredictionWriter
from .freeze_encoder import FreezeEncoder
from .fundus_predictions import NO_FUNDUS, FundusPredictionWriter, draw_contours
from .metrics_json import MetricsJSONWriter
from .pacs_export import PacsExportHandler
from .per_case_metrics import PER_CASE_FILE, PerCaseMetricsWriter
from .prediction_table import write_prediction_csv
from .resume_checkpoint import SIGNATURE_FILE, BestMetricState, ResumeCheckpoint, find_resume_checkpoint
from .run_lock import LOCK_FILE, RunLock, RunLockedError
from .slice_predictions import SlicePredictionWriter, overlay_heatmap
from .task_affinity import TaskAffinity
from .task_logging import TaskEpochSummary, TaskProgressBar, task_scalars
from .volume_predictions import SegClassPredictionWriter

__all__ = [
    "LOCK_FILE",
    "NO_FUNDUS",
    "PER_CASE_FILE",
    "SIGNATURE_FILE",
    "AtomicCheckpointSaver",
    "BestMetricState",
    "CalibrationFitter",
    "CaseResult",
    "CaseResultConsumer",
    "CheckedCheckpointLoader",
    "DicomResultWriter",
    "EMAWeights",
    "FactorPredictionWriter",
    "FreezeEncoder",
    "FundusPredictionWriter",
    "Measurement",
    "MetricsJSONWriter",
    "PacsExportHandler",
    "PerCaseMetricsWriter",
    "PredictionWriter",
    "ResumeCheckpoint",
    "RunLock",
    "RunLockedError",
    "SegClassPredictionWriter",
    "SlicePredictionWriter",
    "TaskAffinity",
    "TaskEpochSummary",
    "TaskProgressBar",
    "check_model_settings",
    "collect_case_results",
    "draw_contours",
    "find_resume_checkpoint",
    "label_map",
    "overlay_heatmap",
    "read_dicom_source",
    "read_training_json",
    "settings_path",
    "task_scalars",
    "write_case_result",
    "write_prediction_csv",
]

