"""MONAI Label app serving the project's multi-task bundles (exported by scripts/export_monailabel_bundle.py).

Start (in .venv-monailabel, see docs/monailabel.md)::

    monailabel start_server --app monailabel_app --studies <folder> --conf models <bundle>,<bundle> \
        --host 127.0.0.1 --port 8000

Conf keys: ``models``: comma-separated bundle names (default: every bundle folder found); ``bundles``: the folder
holding the exported bundles (default ``<app>/model``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import monailabel
from lib.infers import BundleEvaluatorInferTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """Serves each exported bundle with :class:`BundleEvaluatorInferTask` (one model per bundle, named after it)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        self.bundles_dir = os.path.abspath(conf.get("bundles") or os.path.join(app_dir, "model"))
        if not os.path.isdir(self.bundles_dir):
            raise ValueError(f"conf bundles: {self.bundles_dir} is not a folder of exported bundles.")
        found = sorted(d for d in os.listdir(self.bundles_dir) if os.path.isfile(self._inference_json(d)))
        names = [n.strip() for n in conf.get("models", "").split(",") if n.strip()] or found
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(
                f"conf models: {missing} not found in {self.bundles_dir} (bundles there: {found}); export them with "
                "scripts/export_monailabel_bundle.py <bundle> <folder>."
            )
        self.model_names = names
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MTL MONAI bundles",
            description=f"Multi-task bundles {', '.join(names)} (MONAI Label {monailabel.__version__})",
            version="0.1.0",
        )

    def _inference_json(self, name: str) -> str:
        return os.path.join(self.bundles_dir, name, "configs", "inference.json")

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.model_names:
            task = BundleEvaluatorInferTask(os.path.join(self.bundles_dir, name))
            if not task.is_valid():
                raise ValueError(f"bundle {name}: {task.get_path()} is missing.")
            logger.info(f"+++ Adding Inferer:: {name} ({task.type}, {task.segment_names}) => {task.bundle_dir}")
            infers[name] = task
        return infers
