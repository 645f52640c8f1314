"""A MONAI Label infer task that runs one of our bundles' own ``inference.json`` evaluator on one image.

MONAI Label's generic ``BundleInferTask`` runs ``preprocessing -> inferer -> postprocessing`` on a single tensor
output; our networks return a dict of task outputs (segmentation + classification, or one value per risk factor),
some bundles run two-stage pipelines, and our prediction writers already produce the masks in the input's space.
So this task builds the bundle's evaluator on a one-item datalist, runs it into a temporary folder and answers with
what the bundle's prediction writer handed over in memory (``common.handlers.CaseResult``, read from
``engine.state.case_results``). It knows no bundle or task: what it announces and returns comes from the writer.

- A writer with segments (``PredictionWriter.segment_names``) makes a SEGMENTATION task: the label file is a label
  map (0 background, ``k`` = the ``k``-th segment, the later segment where they overlap), a NIfTI in the input's
  space for volumes, a PNG for 2-D images; otherwise a CLASSIFICATION task with no label file.
- The result JSON holds every measurement (``measurements``: name -> value, unit, description), per-segment
  measurements, flags, and, flattened for quick reading, each measurement's value and the writer's details.
- Input: a bundle whose inference.json lists several ``modalities`` takes a 4-D NIfTI (the modalities on its last
  axis, split into one file each) or a DICOM study folder (series mapped to modalities by its ``modality_rules``);
  any other bundle takes one image file or a folder holding one DICOM image.

DICOM folders are read with the bundle's own ``common.dicom`` (it works under the MONAI Label venv's pydicom 2.4).
The bundle's DICOM SEG/SR writer and PACS export handlers are not run by the server (they need highdicom, which
cannot be installed beside pydicom<3).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

__all__ = ["BundleEvaluatorInferTask", "SERVER_SKIPPED_HANDLERS"]

# handlers of inference.json not run in MONAI Label (by class name): it returns results over HTTP (no DICOM SEG/SR
# files, no PACS export from the server), and their modules need highdicom, which the MONAI Label venv cannot hold
SERVER_SKIPPED_HANDLERS = ("DicomResultWriter", "PacsExportHandler")


def _skipped(handler: Any) -> bool:
    return isinstance(handler, dict) and str(handler.get("_target_", "")).rsplit(".", 1)[-1] in SERVER_SKIPPED_HANDLERS
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
        ValueError: the folder has no ``configs/inference.json``, or its handlers hold no prediction writer
            (a ``common.handlers.PredictionWriter``).
    """

    def __init__(self, bundle_dir: str | os.PathLike, description: str | None = None) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        cfg_file = self.bundle_dir / "configs" / "inference.json"
        if not cfg_file.is_file():
            raise ValueError(f"bundle_dir: {self.bundle_dir} has no configs/inference.json.")
        if str(self.bundle_dir) not in sys.path:
            sys.path.insert(0, str(self.bundle_dir))  # the bundle's own copy of common/
        self.inference_config: dict[str, Any] = json.loads(cfg_file.read_text())
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        self.meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        writer = self._prediction_writer()
        if writer is None:
            raise ValueError(f"{cfg_file}: no prediction writer (a common.handlers.PredictionWriter) in 'handlers'.")
        self.segment_names = list(writer.segment_names)
        self.case_key = writer.case_key
        modalities = self.inference_config.get("modalities")
        self.modalities = [str(m) for m in modalities] if isinstance(modalities, list) and len(modalities) > 1 else []
        if self.segment_names:
            labels = {name: k for k, name in enumerate(self.segment_names, start=1)}
            infer_type, dimension = InferType.SEGMENTATION, writer.spatial_dims
        else:
            labels, infer_type, dimension = {}, InferType.CLASSIFICATION, 2
        version = self.meta.get("version", "")
        super().__init__(
            type=infer_type,
            labels=labels,
            dimension=dimension,
            description=description or f"{self.bundle_dir.name} {version}: {self.meta.get('description', '')}",
            config={"device": "cpu"},
        )
        self._lock = threading.Lock()

    def _parser(self, **updates: Any):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle_dir / "configs" / "inference.json"))
        parser.update({"bundle_root": str(self.bundle_dir), **updates})
        parser["handlers"] = [h for h in parser["handlers"] if not _skipped(h)]
        return parser

    def _prediction_writer(self):
        """The inference config's prediction writer, built alone (no network or checkpoint is loaded)."""
        from pydoc import locate

        from common.handlers.case_results import PredictionWriter

        parser = self._parser()
        parser.get_parsed_content("imports")
        for k, handler in enumerate(parser["handlers"]):
            target = handler.get("_target_", "") if isinstance(handler, dict) else ""
            cls = locate(target) if "." in str(target) else None
            if isinstance(cls, type) and issubclass(cls, PredictionWriter):
                return parser.get_parsed_content(f"handlers#{k}")
        return None

    def get_path(self, validate: bool = True) -> str:
        return str(self.bundle_dir / "models" / "model.pt")

    def is_valid(self) -> bool:
        return (self.bundle_dir / "models" / "model.pt").is_file()

    def _record(self, case: str, **items: Any) -> dict[str, Any]:
        return {"case": case, self.case_key: case, **items}

    def _dicom_datalist(self, folder: str, case: str, work: Path) -> list[dict[str, Any]]:
        """The one-item datalist of a DICOM folder (what MONAI Label hands over for a DICOM series or study).

        Several modalities: the folder is a study (or one series) whose image series are mapped to the bundle's
        ``modalities`` by its ``modality_rules`` (``common.dicom.study``); otherwise the folder holds one image.
        """
        from common.dicom.series import list_dicom_files
        from common.dicom.study import holds_dicom, map_study_modalities

        if not holds_dicom(Path(folder)):
            raise ValueError(f"image {folder}: a folder without DICOM files; {self.bundle_dir.name} needs a DICOM "
                             "series/study folder, a NIfTI volume or an image file.")
        if self.modalities:
            from common.errors import DatasetError

            rules = self.inference_config.get("modality_rules")
            try:
                series = map_study_modalities(folder, self.modalities, rules)
            except DatasetError:
                # a DICOMweb datastore hands over one series: fetch the other series of its study
                study = _fetch_study_from_dicomweb(folder, work)
                if study is None:
                    raise
                series = map_study_modalities(study, self.modalities, rules)
            sources = {m: series[m].source for m in self.modalities}
            return [self._record(case, image=[sources[m] for m in self.modalities], **sources,
                                 dicom_series=sources[self.modalities[0]], dicom_study=folder)]
        files = [path for path, _ in list_dicom_files(folder)[0]]
        # one file (a photograph, an enhanced multi-frame volume) or the slices of one series (read as a folder)
        source = str(files[0]) if len(files) == 1 else folder
        return [self._record(case, image=source, dicom_series=source)]

    def _datalist(self, image: str, case: str, work: Path) -> list[dict[str, Any]]:
        if os.path.isdir(image):
            return self._dicom_datalist(image, case, work)
        if not self.modalities:
            return [self._record(case, image=image)]
        import nibabel as nib

        if not image.endswith((".nii", ".nii.gz")):
            raise ValueError(
                f"image {image}: {self.bundle_dir.name} needs a 4-D NIfTI (.nii/.nii.gz) with the modalities "
                f"{self.modalities} on the last axis."
            )
        img = nib.load(image)
        data = np.asanyarray(img.dataobj)
        if data.ndim != 4 or data.shape[-1] != len(self.modalities):
            raise ValueError(
                f"image {image}: expected a 4-D NIfTI with the {len(self.modalities)} modalities {self.modalities} on "
                f"the last axis, got shape {tuple(data.shape)}."
            )
        files: dict[str, str] = {}
        for k, name in enumerate(self.modalities):
            path = work / f"{case}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(data[..., k], dtype=np.float32), img.affine), str(path))
            files[name] = str(path)
        return [self._record(case, image=[files[m] for m in self.modalities], **files)]

    def _run_evaluator(
        self, datalist: list[dict[str, Any]], out_dir: Path, device: str, outputs: list | None = None
    ) -> dict[str, Any]:
        """Run the bundle's evaluator; return the hand-over of its prediction writer, case -> CaseResult.

        ``outputs``, when given, receives each iteration's raw network output (``engine.state.output["pred"]``,
        tensors moved to the CPU), e.g. for uncertainty scores.
        """
        from common.handlers.case_results import collect_case_results

        parser = self._parser(output_dir=str(out_dir), datalist=datalist, num_workers=0,
                              device=f"$torch.device('{device}')")
        parser.get_parsed_content("imports")
        evaluator = parser.get_parsed_content("evaluator")
        results = collect_case_results(evaluator)
        if outputs is not None:
            from ignite.engine import Events
            from monai.utils import convert_to_numpy

            def keep(engine: Any) -> None:
                output = engine.state.output
                pred = output.get("pred") if isinstance(output, dict) else None
                outputs.append(convert_to_numpy(pred, wrap_sequence=False) if pred is not None else None)

            evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
        evaluator.run()
        return results

    def evaluate(self, image: str, device: str = "cpu", outputs: list | None = None) -> Any:
        """Run the bundle on one image file or DICOM folder; return its CaseResult (``outputs``: see
        :meth:`_run_evaluator`)."""
        if not image or not os.path.exists(image):
            raise ValueError(f"image: '{image}' does not exist.")
        name = os.path.basename(image.rstrip("/"))
        case = (name if os.path.isdir(image) else name.split(".")[0]) or "image"  # a series folder: its UID
        with self._lock, tempfile.TemporaryDirectory(prefix="mtl_infer_") as tmp:
            work, out_dir = Path(tmp) / "input", Path(tmp) / "output"
            work.mkdir()
            datalist = self._datalist(image, case, work)
            results = self._run_evaluator(datalist, out_dir, device, outputs)
        if len(results) != 1:
            raise RuntimeError(f"image {image}: the bundle handed over {len(results)} results, expected one.")
        return next(iter(results.values()))

    def _answer(self, result: Any, image: str) -> tuple[str | None, dict[str, Any]]:
        """The label file (or None) and the JSON answer of one case's hand-over."""
        from common.handlers.case_results import label_map

        def described(m: Any) -> dict[str, Any]:
            return {"value": float(m.value) if m.finite else None, "unit": m.unit, "description": m.description}

        answer: dict[str, Any] = {"bundle": self.bundle_dir.name, "version": self.meta.get("version", "")}
        answer.update(result.details)
        answer.update(result.values())
        answer["measurements"] = {k: described(m) for k, m in result.measurements.items()}
        answer["segment_measurements"] = {
            s: {k: described(m) for k, m in values.items()} for s, values in result.segment_measurements.items()
        }
        answer["flags"] = list(result.flags)
        answer["label_names"] = self.labels
        if result.masks is None:
            return None, answer
        labels = label_map(result.masks)
        if result.affine is not None:
            import nibabel as nib

            fd, label_file = tempfile.mkstemp(suffix=".nii.gz")
            os.close(fd)
            nib.save(nib.Nifti1Image(labels, np.asarray(result.affine, dtype=np.float64)), label_file)
        else:
            from PIL import Image

            fd, label_file = tempfile.mkstemp(suffix=".png")
            os.close(fd)
            Image.fromarray(labels).save(label_file)
        return label_file, answer

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Run the bundle on ``request["image"]`` (a file path); return (label file or None, result JSON)."""
        import torch

        image = str(request.get("image", ""))
        device = "cuda" if str(request.get("device", "cpu")).startswith("cuda") and torch.cuda.is_available() else "cpu"
        label_file, answer = self._answer(self.evaluate(image, device), image)
        logger.info(f"{self.bundle_dir.name}: {image} -> {label_file}")
        return label_file, answer
