"""A fifth bundle made of configs alone gets DICOM SEG + SR, PACS-ready results and MONAI Label serving.

The test writes a throwaway bundle for a task pair no bundle of the project has (prostate MRI: lesion segmentation +
clinically significant cancer), from ``common`` components and JSON only, with untrained (seeded) weights: what is
checked is the plumbing, not the model. Nothing in ``common/`` or ``monailabel_app/`` knows its names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser

from common.data import generate_brats_like
from common.dicom import nifti_case_to_dicom
from tests.bundle_cli import REPO
from tests.dicom_validate import DCIODVFY, dciodvfy_errors, dciodvfy_report

NAME = "prostate_lesion_cspca"
SEGMENT, TASK = "prostate_lesion", "cspca"

INFERENCE = {
    "imports": ["$import os", "$import torch", "$import common", "$import common.dicom", "$import common.handlers",
                "$import common.inferers", "$import common.networks", "$import common.transforms"],
    "bundle_root": ".",
    "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
    "output_dir": "$os.path.join(@bundle_root, 'predictions')",
    "dicom_output": False,
    "pacs_dest": "",
    "dicom_codes": {
        "segments": {SEGMENT: {"category": ["SCT", "49755003", "Morphologically abnormal structure"],
                               "type": ["SCT", "52988006", "Lesion"], "region": ["SCT", "41216001", "Prostate"]}},
        "measurements": {f"{TASK}_probability": {
            "concept": ["99MTLMONAI", "CSPCA_PROB", "Clinically significant prostate cancer probability"],
            "unit": "1"}},
    },
    "device": "$torch.device('cpu')",
    "datalist": [],
    "network_def": {"_target_": "common.networks.UNetSegClassifier", "in_channels": 1, "seg_channels": 1,
                    "num_classes": 1, "spatial_dims": 3, "features": [4, 8, 16], "cls_hidden": 8,
                    "seg_task": "lesion_seg", "cls_task": TASK},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "reader": "$common.dicom.DicomSeriesReader()",
         "image_only": True, "ensure_channel_first": True},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]},
    "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
    "inferer": {"_target_": "common.inferers.SegClassSlidingWindowInferer", "roi_size": [16, 16, 8],
                "seg_task": "lesion_seg", "cls_task": TASK},
    "prepare_batch": {"_target_": "common.engines.MultiTaskPrepareBatch", "image_key": "image", "target_keys": [],
                      "meta_keys": ["case"]},
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$os.path.join(@ckpt_dir, 'model.pt')",
         "load_dict": {"model": "@network"}, "map_location": "@device"},
        {"_target_": "common.handlers.SegClassPredictionWriter", "output_dir": "@output_dir",
         "transform": "@preprocessing", "regions": [SEGMENT], "seg_task": "lesion_seg", "cls_task": TASK,
         "class_names": ["not_significant", "significant"]},
        {"_target_": "common.handlers.DicomResultWriter", "output_dir": "@output_dir",
         "algorithm_name": NAME, "algorithm_version": "@_meta_#version", "codes": "@dicom_codes",
         "enabled": "@dicom_output"},
        {"_target_": "common.handlers.PacsExportHandler", "output_dir": "@output_dir",
         "dest": "@pacs_dest"},
    ],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "prepare_batch": "@prepare_batch", "inferer": "@inferer",
                  "val_handlers": "@handlers", "decollate": False},
    "run": ["$@evaluator.run()"],
}
METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
    "version": "0.0.1",
    "changelog": {"0.0.1": "throwaway test bundle"},
    "name": "Prostate lesion + csPCa (test bundle)",
    "description": "configs-only test bundle",
}


@pytest.fixture(scope="module")
def new_bundle(tmp_path_factory) -> dict[str, Path]:
    """The throwaway bundle (configs, LICENSE, seeded untrained model.pt) and one MR case as NIfTI and DICOM."""
    work = tmp_path_factory.mktemp("new_bundle")
    root = work / NAME
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=4))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=4))
    (root / "LICENSE").write_text((REPO / "LICENSE").read_text())
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    generate_brats_like(work / "data", n_cases=1, shape=(32, 32, 12), seed=2)
    case = sorted(p for p in (work / "data").iterdir() if p.is_dir())[0]
    nifti_case_to_dicom(case, work / "dicom", modalities=["t2"])
    return {"root": root, "nifti": case / f"{case.name}_t2.nii.gz", "series": work / "dicom" / "t2", "work": work}


def _run(bundle: dict[str, Path], out: Path, datalist: list[dict], dicom_output: bool) -> None:
    cfg = bundle["root"] / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg / "inference.json"),
           "--meta_file", str(cfg / "metadata.json"), "--bundle_root", str(bundle["root"]),
           "--output_dir", str(out), "--datalist", json.dumps(datalist), "--dicom_output", str(dicom_output)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
def test_new_bundle_gets_dicom_seg_and_sr(new_bundle, tmp_path):
    series = str(new_bundle["series"])
    out = tmp_path / "pred"
    _run(new_bundle, out, [{"image": series, "case": "p1", "dicom_series": series},
                           {"image": str(new_bundle["nifti"]), "case": "p1_nifti"}], dicom_output=True)
    seg_path, sr_path = out / "p1" / "seg.dcm", out / "p1" / "sr.dcm"
    for path in (seg_path, sr_path):
        assert path.is_file()
        if DCIODVFY is not None:
            assert dciodvfy_errors(str(path)) == [], dciodvfy_report(str(path))
    assert not (out / "p1_nifti" / "seg.dcm").exists()  # NIfTI input: files for people only
    captures = sorted((out / "p1").glob("sc_*.dcm"))  # Secondary Captures: on by default, no config key needed
    assert captures and not list((out / "p1_nifti").glob("sc*.dcm"))
    for path in captures:
        if DCIODVFY is not None:
            assert dciodvfy_errors(str(path)) == [], dciodvfy_report(str(path))
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    item = seg.SegmentSequence[0]
    assert item.SegmentLabel == SEGMENT and item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert item.AnatomicRegionSequence[0].CodeValue == "41216001"
    assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == NAME
    source = pydicom.dcmread(sorted(new_bundle["series"].glob("*.dcm"))[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in captures} == {source.StudyInstanceUID}
    row = json.loads((out / "p1" / f"p1_{TASK}.json").read_text())
    found = {}
    stack = list(sr.ContentSequence)
    while stack:
        node = stack.pop()
        stack.extend(node.get("ContentSequence", []))
        if node.ValueType == "NUM":
            found[node.ConceptNameCodeSequence[0].CodeValue] = float(node.MeasuredValueSequence[0].NumericValue)
    assert found["CSPCA_PROB"] == pytest.approx(row[f"{TASK}_probability"], abs=1e-6)
    assert found["118565006"] == pytest.approx(row[f"{SEGMENT}_mm3"], abs=1e-3)  # the segment's volume, mm3


_TASK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from lib.infers.bundle_evaluator import BundleEvaluatorInferTask
import nibabel as nib, numpy as np
task = BundleEvaluatorInferTask(sys.argv[2])
out = {"type": str(task.type), "labels": task.labels, "dimension": task.dimension}
for key, image in (("nifti", sys.argv[3]), ("series", sys.argv[4])):
    label, result = task({"image": image})
    out[key] = {"result": result, "label_shape": list(nib.load(label).shape),
                "label_values": sorted(np.unique(np.asarray(nib.load(label).dataobj)).tolist())}
print("RESULTS " + json.dumps(out, default=str))
"""


@pytest.mark.slow
def test_new_bundle_served_by_monai_label_task(new_bundle, tmp_path):
    """The MONAI Label infer task (in the MONAI Label venv) on the exported throwaway bundle: a segmentation model
    announcing its segment, answering with a label map in the input's space and the probability by name."""
    from tests.test_monailabel import VENV_PY, _exporter

    if not VENV_PY.exists():
        pytest.skip(f"{VENV_PY.parents[1]} is absent: run `bash scripts/install_monailabel.sh` to make it")
    exported = _exporter().export_bundle(new_bundle["root"], tmp_path / "exported")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `common` must come from the bundle
    proc = subprocess.run([str(VENV_PY), "-c", _TASK, str(REPO / "monailabel_app"), str(exported),
                           str(new_bundle["nifti"]), str(new_bundle["series"])], cwd=tmp_path,
                          env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    assert "segmentation" in out["type"].lower() and out["labels"] == {SEGMENT: 1} and out["dimension"] == 3
    import nibabel as nib

    shape = list(nib.load(new_bundle["nifti"]).shape)
    for key in ("nifti", "series"):
        result = out[key]["result"]
        assert out[key]["label_shape"] == shape and set(out[key]["label_values"]) <= {0, 1}
        prob = result["measurements"][f"{TASK}_probability"]
        assert 0.0 <= prob["value"] <= 1.0 and prob["unit"] == "1" and result[f"{TASK}_probability"] == prob["value"]
        assert result["segment_measurements"][SEGMENT]["volume"]["unit"] == "mm3"
        assert result[f"{TASK}_prediction"] in ("not_significant", "significant")
    # the DICOM series holds the NIfTI's voxels (quantised to 16 bits): the same answer
    assert out["series"]["result"][f"{TASK}_probability"] == pytest.approx(
        out["nifti"]["result"][f"{TASK}_probability"], abs=1e-3)
    assert np.isfinite(out["series"]["result"]["measurements"][f"{TASK}_probability"]["value"])
