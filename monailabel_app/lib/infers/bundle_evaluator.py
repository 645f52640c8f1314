"""A MONAI Label infer task that runs one of our bundles' own ``inference.json`` evaluator on one image.

MONAI Label's generic ``BundleInferTask`` runs ``preprocessing -> inferer -> postprocessing`` on a single tensor
output; our networks return a dict of task outputs (segmentation + classification, or one value per risk factor),
fundus_glaucoma is a two-stage locator + crop pipeline, and our prediction writers already produce the label map in
the input's space and the per-case JSON. So this task builds the bundle's evaluator on a one-item datalist, runs it
into a temporary folder and returns what its prediction writer wrote:

- ``seg_class`` (SegClassPredictionWriter, e.g. glioma_seg_idh): the study is one 4-D NIfTI whose last axis holds
  the bundle's ``modalities`` in order (split into one file per modality); returns the label map NIfTI (0
  background, k = k-th region) and the JSON row (class probability, region volumes).
- ``fundus`` (FundusPredictionWriter, fundus_glaucoma): the study is an RGB photograph; returns a PNG label map
  (0 background, 1 disc, 2 cup) and the JSON row (glaucoma probabilities, vCDR, flags).
- ``factors`` (FactorPredictionWriter, cmr_fundus): a CLASSIFICATION task returning no label file and one value (or
  probability for binary factors) per factor in the JSON.

A folder (what MONAI Label hands over for a DICOM series, e.g. from a DICOMweb datastore) is read with the bundle's
own ``common.dicom`` (it works under the MONAI Label venv's pydicom 2.4): for ``seg_class`` a study folder whose image
series are mapped to the bundle's ``modalities`` by its ``modality_rules``; for the photograph kinds a folder with one
DICOM photograph. The bundle's DICOM SEG/SR writer and PACS export handlers are not run by the server (they need
highdicom, which cannot be installed beside pydicom<3).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

__all__ = ["BundleEvaluatorInferTask", "SERVER_SKIPPED_HANDLERS", "WRITER_KINDS"]

# prediction writer target in inference.json -> kind of the task
WRITER_KINDS = {
    "common.handlers.SegClassPredictionWriter": "seg_class",
    "common.handlers.FundusPredictionWriter": "fundus",
    "common.handlers.FactorPredictionWriter": "factors",
}

# handlers of inference.json not run in MONAI Label: it returns results over HTTP (no DICOM SEG/SR files, no PACS
# export from the server), and their modules need highdicom, which the MONAI Label venv (pydicom<3) cannot hold
SERVER_SKIPPED_HANDLERS = (
    "common.handlers.DicomResultWriter",
    "common.handlers.PacsExportHandler",
    "common.handlers.dicom_results.",
    "common.handlers.pacs_export.",
)
# series a study fetch skips (results written back to the study, presentation states, key objects)
NON_IMAGE_MODALITIES = ("SEG", "SR", "PR", "KO", "RTSTRUCT", "REG")


def _fetch_study_from_dicomweb(series_dir: str, work: Path) -> Path | None:
    """The image series of ``series_dir``'s study, retrieved into ``work/study`` from MONAI Label's DICOMweb
    datastore (``--studies http...``, credentials from ``MONAI_LABEL_DICOMWEB_USERNAME/PASSWORD``); None when the
    server does not use a DICOMweb datastore."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass
    from monailabel.config import settings

    url = str(settings.MONAI_LABEL_STUDIES or "")
    if not url.startswith(("http://", "https://")):
        return None
    first = next(p for p in sorted(Path(series_dir).rglob("*")) if p.is_file())
    study_uid = str(pydicom.dcmread(str(first), stop_before_pixels=True).StudyInstanceUID)
    user = settings.MONAI_LABEL_DICOMWEB_USERNAME or settings.MONAI_LABEL_DATASTORE_USERNAME
    password = settings.MONAI_LABEL_DICOMWEB_PASSWORD or settings.MONAI_LABEL_DATASTORE_PASSWORD
    session = create_session_from_user_pass(user, password) if user and password else None
    client = DICOMwebClient(url=url, session=session)
    study = work / "study"
    for found in client.search_for_series(study_uid):
        modality = found.get("00080060", {}).get("Value", [""])[0]
        if modality in NON_IMAGE_MODALITIES:
            continue
        series_uid = found["0020000E"]["Value"][0]
        folder = study / series_uid
        folder.mkdir(parents=True, exist_ok=True)
        for ds in client.retrieve_series(study_uid, series_uid):
            ds.save_as(str(folder / f"{ds.SOPInstanceUID}.dcm"))
    logger.info(f"retrieved study {study_uid} from {url} into {study}")
    return study


class BundleEvaluatorInferTask(InferTask):
    """Runs the evaluator of ``<bundle>/configs/inference.json`` on the requested image.

    Args:
        bundle_dir: an exported bundle folder (``scripts/export_monailabel_bundle.py``): configs, models, common.
        description: text shown by ``/info/``; default from the bundle's metadata.

    Raises:
        ValueError: the folder has no ``configs/inference.json``, or its handlers hold none of the known writers.
    """

    def __init__(self, bundle_dir: str | os.PathLike, description: str | None = None) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        cfg_file = self.bundle_dir / "configs" / "inference.json"
        if not cfg_file.is_file():
            raise ValueError(f"bundle_dir: {self.bundle_dir} has no configs/inference.json.")
        self.inference_config: dict[str, Any] = json.loads(cfg_file.read_text())
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        self.meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        targets = [h.get("_target_") for h in self.inference_config.get("handlers", []) if isinstance(h, dict)]
        kinds = [WRITER_KINDS[t] for t in targets if t in WRITER_KINDS]
        if len(kinds) != 1:
            raise ValueError(f"{cfg_file}: expected one of the writers {sorted(WRITER_KINDS)} in 'handlers'.")
        self.kind = kinds[0]
        if self.kind == "seg_class":
            labels = {name: k for k, name in enumerate(self.inference_config.get("seg_regions", {}), start=1)}
            infer_type, dimension = InferType.SEGMENTATION, 3
        elif self.kind == "fundus":
            labels = {name: k for k, name in enumerate(self.inference_config.get("regions", []), start=1)}
            infer_type, dimension = InferType.SEGMENTATION, 2
        else:
            labels = {f["name"]: k for k, f in enumerate(self.inference_config.get("factors", []))}
            infer_type, dimension = InferType.CLASSIFICATION, 2
        version = self.meta.get("version", "")
        super().__init__(
            type=infer_type,
            labels=labels,
            dimension=dimension,
            description=description or f"{self.bundle_dir.name} {version}: {self.meta.get('description', '')}",
            config={"device": "cpu"},
        )
        self._lock = threading.Lock()
        if str(self.bundle_dir) not in sys.path:
            sys.path.insert(0, str(self.bundle_dir))  # the bundle's own copy of common/

    def get_path(self, validate: bool = True) -> str:
        return str(self.bundle_dir / "models" / "model.pt")

    def is_valid(self) -> bool:
        return (self.bundle_dir / "models" / "model.pt").is_file()

    def _dicom_datalist(self, folder: str, case: str, work: Path) -> list[dict[str, Any]]:
        """The one-item datalist of a DICOM folder (what MONAI Label hands over for a DICOM series or study).

        3-D bundles: the folder is a study (or one series) whose image series are mapped to the bundle's
        ``modalities`` by its ``modality_rules`` (``common.dicom.study``); photograph bundles: the folder holds
        one DICOM photograph.
        """
        from common.dicom.series import list_dicom_files
        from common.dicom.study import holds_dicom, map_study_modalities

        if not holds_dicom(Path(folder)):
            raise ValueError(f"image {folder}: a folder without DICOM files; {self.bundle_dir.name} needs a DICOM "
                             "series/study folder, a NIfTI volume or a photograph file.")
        if self.kind == "seg_class":
            from common.errors import DatasetError

            modalities = list(self.inference_config["modalities"])
            rules = self.inference_config.get("modality_rules")
            try:
                series = map_study_modalities(folder, modalities, rules)
            except DatasetError:
                # a DICOMweb datastore hands over one series: fetch the other series of its study
                study = _fetch_study_from_dicomweb(folder, work)
                if study is None:
                    raise
                series = map_study_modalities(study, modalities, rules)
            sources = {m: series[m].source for m in modalities}
            return [{"case": case, "image": [sources[m] for m in modalities], **sources,
                     "dicom_series": sources[modalities[0]], "dicom_study": folder}]
        files = [path for path, _ in list_dicom_files(folder)[0]]
        if len(files) != 1:
            raise ValueError(f"image {folder}: {self.bundle_dir.name} takes one photograph, the folder holds "
                             f"{len(files)} DICOM files.")
        record = {"image": str(files[0]), "case": case, "dicom_series": str(files[0])}
        return [record] if self.kind == "fundus" else [{**record, "image_id": case}]

    def _datalist(self, image: str, case: str, work: Path) -> list[dict[str, Any]]:
        if os.path.isdir(image):
            return self._dicom_datalist(image, case, work)
        if self.kind == "seg_class":
            import nibabel as nib

            modalities = list(self.inference_config["modalities"])
            if not image.endswith((".nii", ".nii.gz")):
                raise ValueError(
                    f"image {image}: {self.bundle_dir.name} needs a 4-D NIfTI (.nii/.nii.gz) with the modalities "
                    f"{modalities} on the last axis."
                )
            img = nib.load(image)
            data = np.asanyarray(img.dataobj)
            if data.ndim == 3 and len(modalities) == 1:
                data = data[..., None]
            if data.ndim != 4 or data.shape[-1] != len(modalities):
                raise ValueError(
                    f"image {image}: expected a 4-D NIfTI with the {len(modalities)} modalities {modalities} on the "
                    f"last axis, got shape {tuple(data.shape)}."
                )
            record: dict[str, Any] = {"case": case}
            for k, name in enumerate(modalities):
                path = work / f"{case}_{name}.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(data[..., k], dtype=np.float32), img.affine), str(path))
                record[name] = str(path)
            record["image"] = [record[m] for m in modalities]
            return [record]
        if self.kind == "fundus":
            return [{"image": image, "case": case}]
        return [{"image": image, "case": case, "image_id": case}]

    def _run_evaluator(self, datalist: list[dict[str, Any]], out_dir: Path, device: str) -> None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle_dir / "configs" / "inference.json"))
        parser.update(
            {
                "bundle_root": str(self.bundle_dir),
                "output_dir": str(out_dir),
                "datalist": datalist,
                "num_workers": 0,
                "device": f"$torch.device('{device}')",
            }
        )
        parser["handlers"] = [
            h for h in parser["handlers"] if not (isinstance(h, dict) and str(h.get("_target_", "")).startswith(
                SERVER_SKIPPED_HANDLERS))
        ]
        parser.get_parsed_content("imports")
        parser.get_parsed_content("evaluator").run()

    def _result(self, out_dir: Path, case: str, image: str) -> tuple[str | None, dict[str, Any]]:
        result: dict[str, Any] = {"bundle": self.bundle_dir.name, "version": self.meta.get("version", "")}
        if self.kind == "factors":
            with open(out_dir / "predictions.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            if len(rows) != 1:
                raise RuntimeError(f"image {image}: expected one prediction row, got {len(rows)}.")
            factors: dict[str, Any] = {}
            for factor in self.inference_config.get("factors", []):
                name, unit = factor["name"], factor.get("unit", "")
                if factor.get("kind") == "binary":
                    factors[name] = {
                        "probability": float(rows[0][f"{name}_probability"]),
                        "prediction": int(rows[0][f"{name}_prediction"]),
                        "unit": unit,
                    }
                else:
                    factors[name] = {"value": float(rows[0][name]), "unit": unit}
            result["factors"] = factors
            return None, result
        folder = out_dir / case
        cls_task = "idh" if self.kind == "seg_class" else "glaucoma"
        json_files = sorted(folder.glob(f"{case}_*.json"))
        if len(json_files) != 1:
            raise RuntimeError(f"image {image}: the bundle wrote {len(json_files)} result JSON files in {folder}.")
        row = json.loads(json_files[0].read_text())
        cls_task = json_files[0].stem[len(case) + 1 :] or cls_task
        if self.kind == "seg_class":
            src = folder / f"{case}_seg.nii.gz"
            fd, label_file = tempfile.mkstemp(suffix=".nii.gz")
            os.close(fd)
            shutil.copyfile(src, label_file)
            row.pop("segmentation", None)
        else:
            from PIL import Image

            disc = np.asarray(Image.open(folder / f"{case}_disc.png")) > 0
            cup = np.asarray(Image.open(folder / f"{case}_cup.png")) > 0
            label = disc.astype(np.uint8) + (cup & disc).astype(np.uint8)
            fd, label_file = tempfile.mkstemp(suffix=".png")
            os.close(fd)
            Image.fromarray(label).save(label_file)
            for key in ("disc_mask", "cup_mask", "overlay"):
                row.pop(key, None)
        result.update(row)
        result["task"] = cls_task
        result["label_names"] = self.labels
        return label_file, result

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Run the bundle on ``request["image"]`` (a file path); return (label file or None, result JSON)."""
        import torch

        image = str(request.get("image", ""))
        if not image or not os.path.exists(image):
            raise ValueError(f"image: '{image}' does not exist.")
        name = os.path.basename(image.rstrip("/"))
        case = (name if os.path.isdir(image) else name.split(".")[0]) or "image"  # a series folder: its UID
        device = "cuda" if str(request.get("device", "cpu")).startswith("cuda") and torch.cuda.is_available() else "cpu"
        with self._lock, tempfile.TemporaryDirectory(prefix="mtl_infer_") as tmp:
            work, out_dir = Path(tmp) / "input", Path(tmp) / "output"
            work.mkdir()
            datalist = self._datalist(image, case, work)
            self._run_evaluator(datalist, out_dir, device)
            label_file, result = self._result(out_dir, case, image)
        logger.info(f"{self.bundle_dir.name}: {image} -> {label_file}")
        return label_file, result
