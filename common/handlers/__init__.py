"""Ignite handlers: per-task logging, metrics.json, checkpoints and resuming, prediction writers, DICOM results
and PACS export."""

from __future__ import annotations

import importlib

from .atomic_checkpoint import AtomicCheckpointSaver
from .factor_predictions import FactorPredictionWriter
from .fundus_predictions import FundusPredictionWriter, draw_contours
from .metrics_json import MetricsJSONWriter
from .pacs_export import PacsExportHandler
from .prediction_table import write_prediction_csv
from .resume_checkpoint import SIGNATURE_FILE, ResumeCheckpoint, find_resume_checkpoint
from .slice_predictions import SlicePredictionWriter, overlay_heatmap
from .task_affinity import TaskAffinity
from .task_logging import TaskEpochSummary, TaskProgressBar, task_scalars
from .volume_predictions import SegClassPredictionWriter

# names of the modules that are also commands (``python -m common.handlers.<module>``), imported on first use so
# that running such a module does not import it twice
_COMMAND_EXPORTS = {
    "BUNDLE_KINDS": "dicom_results",
    "DicomResultWriter": "dicom_results",
    "bundle_identity": "dicom_results",
    "case_results": "dicom_results",
    "read_dicom_source": "dicom_results",
    "write_case_results": "dicom_results",
    "write_results_for_output_dir": "dicom_results",
}

__all__ = [
    "BUNDLE_KINDS",
    "SIGNATURE_FILE",
    "AtomicCheckpointSaver",
    "DicomResultWriter",
    "FactorPredictionWriter",
    "FundusPredictionWriter",
    "MetricsJSONWriter",
    "PacsExportHandler",
    "ResumeCheckpoint",
    "SegClassPredictionWriter",
    "SlicePredictionWriter",
    "TaskAffinity",
    "TaskEpochSummary",
    "TaskProgressBar",
    "bundle_identity",
    "case_results",
    "draw_contours",
    "find_resume_checkpoint",
    "overlay_heatmap",
    "read_dicom_source",
    "task_scalars",
    "write_case_results",
    "write_prediction_csv",
    "write_results_for_output_dir",
]


def __getattr__(name: str):
    """Import a name of :data:`_COMMAND_EXPORTS` on first use (PEP 562)."""
    if name in _COMMAND_EXPORTS:
        return getattr(importlib.import_module(f".{_COMMAND_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
