"""A MONAI Label train task that runs a bundle's own ``configs/train.json`` on the datastore's labelled studies.

MONAI Label's generic ``BundleTrainTask`` hands a bundle only ``{image, label}`` pairs; our bundles train several
tasks at once and read per-case labels (IDH status, glaucoma) beside the masks. This task knows no bundle: the
bundle's ``train.json`` says, under ``datastore_labels``, how a datastore study becomes one of its training records:

- ``masks``: record key -> the segments (the infer task's label names) whose union is that binary mask, e.g.
  ``{"disc": ["optic_disc", "optic_cup"], "cup": ["optic_cup"]}``; written from the final label map (a NIfTI in the
  image's space for volumes, a 0/255 PNG for 2-D images).
- ``case_labels``: record key -> ``{"info_key": key of the label info JSON, "values": {text: code} | "range": [lo,
  hi], "missing": code}``: the task labels submitted with the label (``PUT /datastore/label`` with ``params`` =
  label info). An absent key gets ``missing`` (the bundle's "unknown", masked from the loss); a value outside
  ``values``/``range`` is refused when the label is saved (:meth:`BundleTrainTask.check_label_info`).

The image part of a record is the infer task's (a multi-modal 4-D NIfTI is split into one file per modality). The
records go into a work folder as an args file; ``python -m monai.bundle run`` trains with them (``train#records``,
``validate#records``), the request's epochs and overrides, into the work folder's ``models/``. When the run ends
well, its checkpoints replace those of the served bundle (file by file, atomically), and the infer task, which
loads ``models/model.pt`` on every call, answers with the new model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

__all__ = ["BundleTrainTask", "LabelError"]

# model files a training run writes that are not published to the served bundle
UNPUBLISHED = ("resume", ".lock", ".tmp")


class LabelError(ValueError):
    """A study, its label or its label info cannot be used (the message names the study and what is wrong)."""


class BundleTrainTask(TrainTask):
    """Trains one exported bundle with its ``configs/train.json`` on the labelled studies of the datastore.

    Args:
        infer_task: the bundle's :class:`~lib.infers.BundleEvaluatorInferTask` (its folder, segment names and
            input handling); its ``models/`` receives the new checkpoints.
        work_dir: folder for the training runs (one sub-folder per run).
        max_epochs: default epochs of a run (request ``max_epochs``).
        val_split: default share of labelled studies used for validation (request ``val_split``).

    Raises:
        ValueError: the bundle has no ``configs/train.json`` or it has no valid ``datastore_labels``.
    """

    def __init__(self, infer_task: Any, work_dir: str | os.PathLike, max_epochs: int = 2, val_split: float = 0.2):
        self.infer_task = infer_task
        self.bundle_dir = Path(infer_task.bundle_dir)
        self.name = self.bundle_dir.name
        self.train_json = self.bundle_dir / "configs" / "train.json"
        if not self.train_json.is_file():
            raise ValueError(f"bundle {self.name}: {self.train_json} is missing (nothing to train with).")
        self.work_dir = Path(work_dir)
        self.max_epochs, self.val_split = int(max_epochs), float(val_split)
        spec = self._parsed("datastore_labels")
        if not isinstance(spec, dict) or not isinstance(spec.get("masks", {}), dict):
            raise ValueError(f"{self.train_json}: 'datastore_labels' must be a dict with 'masks' and 'case_labels'.")
        self.masks: dict[str, list[str]] = {str(k): [str(s) for s in v] for k, v in spec.get("masks", {}).items()}
        unknown = sorted({s for v in self.masks.values() for s in v} - set(infer_task.segment_names))
        if unknown:
            raise ValueError(f"{self.train_json}: datastore_labels masks name segments {unknown}; the model's "
                             f"segments are {infer_task.segment_names}.")
        self.case_labels: dict[str, dict[str, Any]] = dict(spec.get("case_labels", {}))
        for key, rule in self.case_labels.items():
            if not isinstance(rule, dict) or "info_key" not in rule or ("values" in rule) == ("range" in rule):
                raise ValueError(f"{self.train_json}: datastore_labels case_labels '{key}' needs 'info_key' and one "
                                 "of 'values' or 'range'.")
        super().__init__(f"Train {self.name} with its own train.json on the datastore's labelled studies")

    def _parsed(self, key: str) -> Any:
        """``train.json``'s ``key`` with its references and expressions resolved."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.train_json))
        parser["bundle_root"] = str(self.bundle_dir)
        if key not in parser:
            raise ValueError(f"{self.train_json}: no '{key}' (how datastore labels become training records).")
        parser.get_parsed_content("imports")
        return parser.get_parsed_content(key)

    def config(self) -> dict[str, Any]:
        return {"max_epochs": self.max_epochs, "val_split": self.val_split, "device": "cpu", "overrides": {},
                "label_info": {r["info_key"]: sorted(r["values"]) if "values" in r else f"number in {r['range']}"
                               for r in self.case_labels.values()}}

    # --- labels -------------------------------------------------------------------------------------------------

    def check_label_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """The record's case labels coded from a label info; raise :class:`LabelError` on a value not allowed."""
        coded: dict[str, Any] = {}
        for key, rule in self.case_labels.items():
            name = rule["info_key"]
            value = info.get(name) if isinstance(info, dict) else None
            if value is None:
                coded[key] = rule.get("missing", -1)
            elif "values" in rule:
                text = str(value).strip().lower() if not isinstance(value, bool) else str(int(value))
                if isinstance(value, float) and value.is_integer():
                    text = str(int(value))
                allowed = {str(k).lower(): v for k, v in rule["values"].items()}
                if text not in allowed:
                    raise LabelError(f"study {image_id}: label info {name}={value!r} is not one of "
                                     f"{sorted(k for k in rule['values'] if k)} ({self.name}).")
                coded[key] = allowed[text]
            else:
                low, high = (float(x) for x in rule["range"])
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if not low <= number <= high:
                    raise LabelError(f"study {image_id}: label info {name}={value!r} is not a number in "
                                     f"[{low}, {high}] ({self.name}).")
                coded[key] = number
        return coded

    def accepts(self, image_id: str, datastore: Datastore) -> bool:
        """Whether a study is for this model: its final label info names the model (``"model"``), or, without a
        name, the study's form fits the model's dimension (3-D: a NIfTI or a DICOM folder; 2-D: an image file)."""
        info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value) or {}
        if info.get("model"):
            return str(info["model"]) == self.name
        uri = datastore.get_image_uri(image_id)
        volume = os.path.isdir(uri) or uri.endswith((".nii", ".nii.gz"))
        return volume == (int(self.infer_task.dimension) == 3)

    def labelled(self, datastore: Datastore) -> list[str]:
        """Ids of the studies for this model with a final label."""
        return sorted(i for i in datastore.get_labeled_images() if self.accepts(i, datastore))

    def check_ready(self, datastore: Datastore) -> list[str]:
        """The labelled studies; raise :class:`LabelError` when there is none."""
        ids = self.labelled(datastore)
        if not ids:
            total = len(datastore.list_images())
            raise LabelError(f"train {self.name}: no labelled study for this model in the datastore ({total} studies, "
                             f"none of them a {self.infer_task.dimension}-D input of {self.name} with a "
                             f"'{DefaultLabelTag.FINAL.value}' label); submit labels with PUT /datastore/label first.")
        return ids

    def _masks(self, image_id: str, label_file: str, case: str, folder: Path) -> dict[str, str]:
        """One binary mask file per ``masks`` key from a datastore label map."""
        names = list(self.infer_task.segment_names)
        out: dict[str, str] = {}
        if label_file.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(label_file)
            data = np.asarray(img.dataobj)
            if data.ndim == 4 and data.shape[-1] == 1:
                data = data[..., 0]
            for key, segments in self.masks.items():
                mask = np.isin(data, [names.index(s) + 1 for s in segments]).astype(np.uint8)
                path = folder / f"{case}_{key}.nii.gz"
                nib.save(nib.Nifti1Image(mask, img.affine), str(path))
                out[key] = str(path)
            return out
        from PIL import Image

        try:
            data = np.asarray(Image.open(label_file))
        except OSError as e:
            raise LabelError(f"study {image_id}: label {label_file} is neither NIfTI nor an image ({e}).") from e
        if data.ndim == 3:
            data = data[..., 0]
        for key, segments in self.masks.items():
            mask = np.isin(data, [names.index(s) + 1 for s in segments]).astype(np.uint8) * 255
            path = folder / f"{case}_{key}.png"
            Image.fromarray(mask).save(path)
            out[key] = str(path)
        return out

    def records(self, datastore: Datastore, folder: Path) -> list[dict[str, Any]]:
        """One training record per labelled study (images, masks and coded case labels), files under ``folder``."""
        records = []
        for image_id in self.check_ready(datastore):
            image = datastore.get_image_uri(image_id)
            label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value)
            info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value) or {}
            coded = self.check_label_info(image_id, info)
            case_dir = folder / image_id
            case_dir.mkdir(parents=True, exist_ok=True)
            try:
                record = self.infer_task._datalist(image, image_id, case_dir)[0]
            except Exception as e:
                raise LabelError(f"study {image_id}: {image} is not an input of {self.name}: {e}") from e
            record.update(self._masks(image_id, label, image_id, case_dir))
            record.update(coded)
            records.append(record)
        return records

    def split(self, records: list[dict[str, Any]], val_split: float) -> tuple[list[dict], list[dict]]:
        """Seeded train/validation split; with fewer than 2 studies (or ``val_split`` 0) validation uses the
        training studies, so a best-model checkpoint is still written."""
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}.")
        order = list(range(len(records)))
        random.Random(0).shuffle(order)
        n_val = max(1, round(len(records) * val_split)) if len(records) >= 2 and val_split > 0 else 0
        val = [records[i] for i in sorted(order[:n_val])]
        train = [records[i] for i in sorted(order[n_val:])]
        return train, val or train

    # --- run ----------------------------------------------------------------------------------------------------

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train on the labelled studies; publish the new checkpoints to the served bundle.

        Errors are HTTP errors (422: a study, label or setting that cannot be used; 500: the run failed), so that
        ``POST /train/<model>?run_sync=true`` answers with the message; a background task logs it in its details.
        """
        from fastapi import HTTPException

        try:
            return self._train(request, datastore)
        except ValueError as e:  # LabelError included
            raise HTTPException(status_code=422, detail=str(e)) from e
        except RuntimeError as e:
            raise HTTPException(status_code=500, detail=str(e)) from e

    def _train(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        run_dir = self.work_dir / f"{self.name}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
        data_dir, models_dir = run_dir / "data", run_dir / "models"
        data_dir.mkdir(parents=True)
        records = self.records(datastore, data_dir)
        train, val = self.split(records, float(request.get("val_split", self.val_split)))
        epochs = int(request.get("max_epochs", self.max_epochs))
        if epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {epochs}.")
        device = "cuda" if str(request.get("device", "cpu")).startswith("cuda") else "cpu"
        overrides = request.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"overrides must be a dict of train.json keys, got {type(overrides).__name__}.")
        args = {
            "bundle_root": str(self.bundle_dir), "ckpt_dir": str(models_dir), "dataset_dir": str(data_dir),
            "log_dir": str(run_dir / "logs"), "output_dir": str(run_dir / "eval"),
            "device": f"$torch.device('{device}' if '{device}' == 'cpu' or torch.cuda.is_available() else 'cpu')",
            "epochs": epochs, "val_interval": 1, "resume": False, "num_workers": 0, "progress_bar": False,
            **overrides,
            "train#records": train, "validate#records": val,
        }
        args_file = run_dir / "args.json"
        args_file.write_text(json.dumps(args, indent=1))
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(self.train_json), "--meta_file",
               str(self.bundle_dir / "configs" / "metadata.json"), "--args_file", str(args_file)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(self.bundle_dir), os.environ.get("PYTHONPATH", "")]))
        log_file = run_dir / "train.log"
        logger.info(f"{self.name}: training on {len(train)} studies (validation {len(val)}), {epochs} epochs: "
                    f"{' '.join(cmd)} (log {log_file})")
        with open(log_file, "w") as log:
            proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        text = log_file.read_text(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"train {self.name}: monai.bundle run failed (exit {proc.returncode}): "
                               f"{_cause(text)} (log {log_file})")
        published = self.publish(models_dir)
        return {"model": self.name, "train_studies": [r["case"] for r in train],
                "validation_studies": [r["case"] for r in val], "epochs": epochs, "published": published,
                "run_dir": str(run_dir), "seconds": round(time.time() - start, 1)}

    def publish(self, models_dir: Path) -> list[str]:
        """Move the run's model files into the served bundle's ``models/`` (each replaced atomically)."""
        files = sorted(p for p in models_dir.glob("*")
                       if p.is_file() and not any(x in p.name for x in UNPUBLISHED))
        if not any(p.name == "model.pt" for p in files):
            raise RuntimeError(f"train {self.name}: the run wrote no model.pt in {models_dir} (did validation run?).")
        target = self.bundle_dir / "models"
        for src in files:
            tmp = target / f".{src.name}.publishing"
            shutil.copy2(src, tmp)
            os.replace(tmp, target / src.name)
        logger.info(f"{self.name}: published {[p.name for p in files]} to {target}")
        return [p.name for p in files]


def _cause(log: str) -> str:
    """The error a failed run names: its last ``<Error>: message`` line that is not MONAI's wrapper around a config
    expression (the bundles' error hook makes a data or settings error the last line)."""
    errors = [line.strip() for line in log.splitlines()
              if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line.strip())
              and not line.strip().startswith("RuntimeError: Failed to evaluate")]
    if errors:
        return errors[-1]
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"
