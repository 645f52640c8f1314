"""MONAI Label app serving the project's multi-task bundles (exported by scripts/export_monailabel_bundle.py).

Start (in .venv-monailabel, see docs/monailabel.md)::

    monailabel start_server --app monailabel_app --studies <folder> --conf models <bundle>,<bundle> \
        --host 127.0.0.1 --port 8000

Conf keys: ``models``: comma-separated bundle names (default: every bundle folder found); ``bundles``: the folder
holding the exported bundles (default ``<app>/model``); ``train_dir``: where training runs write (default
``<app>/train``); ``epochs``: default epochs of a training request (default 2).

Tasks: one infer task per bundle (named after it); a train task for each bundle whose ``train.json`` has
``datastore_labels`` (the extra task labels come from the label info submitted with the label); active learning
strategies ``random``, ``first`` and ``<bundle>_uncertainty``. Labels whose label info holds a task label outside
the bundle's allowed values, labels for unknown studies, and training without a labelled study are refused with
one HTTP error naming the study and the problem.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import monailabel
from lib.datastore import LabelCheckingDatastore
from lib.infers import BundleEvaluatorInferTask
from lib.strategies import TaskUncertainty
from lib.trainers import BundleTrainTask, LabelError
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

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
        self.train_dir = os.path.abspath(conf.get("train_dir") or os.path.join(app_dir, "train"))
        self.epochs = int(conf.get("epochs", 2))
        self.infer_tasks: dict[str, BundleEvaluatorInferTask] = {}
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
        self.infer_tasks = infers
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, task in self.infer_tasks.items():
            train_json = task.bundle_dir / "configs" / "train.json"
            if not train_json.is_file() or "datastore_labels" not in train_json.read_text():
                logger.info(f"--- No trainer for {name}: {train_json} has no datastore_labels")
                continue
            trainers[name] = BundleTrainTask(task, self.train_dir, max_epochs=self.epochs)
            logger.info(f"+++ Adding Trainer:: {name} => label info {trainers[name].config()['label_info']}")
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        for name, task in self.infer_tasks.items():
            strategies[f"{name}_uncertainty"] = TaskUncertainty(task)
        return strategies

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # labels are not checked on a DICOMweb datastore
        return LabelCheckingDatastore(
            self.studies,
            check=self.check_label,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def check_label(self, image_id: str, label_info: dict[str, Any]) -> None:
        """Refuse a label info holding a task label that a trainer defines with a value it does not allow."""
        model = (label_info or {}).get("model")
        if model and model not in getattr(self, "_trainers", {}):
            raise LabelError(f"study {image_id}: label info model={model!r} is not a model with a trainer "
                             f"({sorted(self._trainers)}).")
        for name, trainer in getattr(self, "_trainers", {}).items():
            if isinstance(trainer, BundleTrainTask) and model in (None, "", name):
                known = {r["info_key"] for r in trainer.case_labels.values()}
                if known & set(label_info or {}):
                    trainer.check_label_info(image_id, label_info)

    def bundle_path(self, model: str) -> str | None:
        """Called by MONAI Label in the server process before it starts a training task in the background: a
        request that cannot train (no labelled study) is refused here, as one HTTP error, instead of failing in
        the background."""
        trainer = self._trainers.get(model)
        if isinstance(trainer, BundleTrainTask):
            try:
                trainer.check_ready(self.datastore())
            except LabelError as e:
                from fastapi import HTTPException

                raise HTTPException(status_code=422, detail=str(e)) from e
        return None
