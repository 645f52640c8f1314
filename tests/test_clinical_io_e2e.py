"""Clinical I/O end to end against a real Orthanc (issue 7): a case converted to a DICOM study is C-STOREd into
Orthanc, pulled back by WADO-RS, run through ``glioma_seg_idh``'s inference with ``--dicom_output True
--pacs_dest``, and the SEG, SR and Secondary Captures the bundle sent by STOW-RS are found by QIDO-RS, retrieved,
validated by dciodvfy and their references (and the SCs' outlines, against the SEG) checked against the pulled study
and the bundle's predictions. The same, lighter, for ``fundus_glaucoma`` and one DICOM photograph (STOW-RS in, SEG of
disc/cup + SR with vCDR and glaucoma probability + SC).

Orthanc runs in a loopback-only network namespace (``tests/orthanc_server.py``, needs root); every client (the
export CLI, the bundle run, the DICOMweb client) runs inside it. Real data (``../shared/data/lgg``) is used where
present, else a case of the synthetic generator, so the test always runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from common.data import generate_brats_like
from common.dicom import nifti_case_to_dicom, write_photo
from tests.bundle_cli import REAL_DATA, REPO, bundle_configs
from tests.bundle_specs import SPECS
from tests.dicom_validate import DCIODVFY, assert_secondary_capture, dciodvfy_errors, dciodvfy_report
from tests.orthanc_server import OrthancServer

pytestmark = pytest.mark.slow

MODALITIES = ["t1", "t1ce", "flair"]  # glioma_seg_idh's default channels; t1 (the first) is the SEG's reference
# inference settings for the session's tiny glioma_seg_idh model (features [4, 8, 16]; larger sliding windows)
SMALL = {"features": [4, 8, 16], "patch_size": 32, "samples_per_case": 2, "batch_size": 4, "sw_batch_size": 64}
IDH_CODE = "IDH_MUT_PROB"  # 99MTLMONAI code of idh_probability (docs/dicom_output.md)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _source_case(tmp_path: Path) -> Path:
    """One real TCGA-LGG case when ``../shared/data/lgg`` exists, else a synthetic BraTS-like case."""
    lgg = REAL_DATA / "lgg"
    if lgg.is_dir():
        cases = sorted(p for p in lgg.iterdir() if p.is_dir() and all((p / f"{p.name}_{m}.nii.gz").exists()
                                                                      for m in MODALITIES))
        if cases:
            return cases[0]
    synthetic = tmp_path / "synthetic_case"
    generate_brats_like(synthetic, n_cases=1, shape=(48, 48, 12), seed=11)
    return next(p for p in synthetic.iterdir() if p.is_dir())


def _assert_valid(path: str) -> None:
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH: scripts/install_system.sh installs it")
    assert dciodvfy_errors(path) == [], f"dciodvfy errors in {path}:\n" + dciodvfy_report(path)


def _sr_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _sr_items(item)


def _sr_num(ds: pydicom.Dataset, code: str) -> float:
    values = [float(i.MeasuredValueSequence[0].NumericValue) for i in _sr_items(ds)
              if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == code]
    assert len(values) == 1, f"expected one NUM item {code} in the SR, found {len(values)}"
    return values[0]


def _evidence_uids(ds: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs listed in the SR's CurrentRequestedProcedureEvidenceSequence."""
    return {
        sop.ReferencedSOPInstanceUID
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def _run_bundle_in_netns(pacs: OrthancServer, bundle: str, overrides: dict, env: dict) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``bundle``'s inference.json inside the Orthanc namespace."""
    cfg = bundle_configs(bundle)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg / "inference.json"),
           "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    proc = subprocess.run(pacs.netns_cmd(*cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"inference failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_glioma_dicom_study_from_orthanc_to_seg_and_sr_in_orthanc(tmp_path, trained_bundle):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    # the session's tiny model, trained on synthetic data (the architecture is size-agnostic: sliding windows)
    root = trained_bundle("glioma_seg_idh")

    # the case as a DICOM study (one MR series per modality)
    case = _source_case(tmp_path)
    study_dir = tmp_path / "converted" / case.name
    written = nifti_case_to_dicom(case, study_dir, modalities=MODALITIES)
    study_uid = pydicom.dcmread(written["t1"][0], stop_before_pixels=True).StudyInstanceUID

    with OrthancServer() as pacs:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", MTL_PACS_USER=pacs.username,
                   MTL_PACS_PASSWORD=pacs.password, MTL_PACS_OUTBOX=str(tmp_path / "outbox"))
        dest = tmp_path / "dest.json"
        dest.write_text(json.dumps(pacs.destination()))

        # 1. the modality pushes the study to the PACS by C-STORE (the export CLI, inside the namespace)
        push = subprocess.run(
            pacs.netns_cmd(sys.executable, "-m", "common.pacs", "send", "--dest", str(dest), "--protocol", "cstore",
                           "--outbox", str(tmp_path / "push_outbox"), str(study_dir)),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert push.returncode == 0, push.stdout + push.stderr
        n_source = sum(len(v) for v in written.values())
        assert len(pacs.instance_uids()) == n_source

        with pacs.inside():
            client = DICOMwebClient(url=pacs.dicomweb_url,
                                    session=create_session_from_user_pass(pacs.username, pacs.password))
            # 2. pull the study back by WADO-RS into <dataset>/<case>/<series description>/<SOP UID>.dcm
            pulled = client.retrieve_study(study_uid)
        assert len(pulled) == n_source
        case_id = f"{case.name}_pulled"
        dataset = tmp_path / "pulled"
        pulled_uids: dict[str, set[str]] = {}
        for ds in pulled:
            folder = dataset / case_id / str(ds.SeriesDescription)
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            pulled_uids.setdefault(str(ds.SeriesDescription), set()).add(ds.SOPInstanceUID)
        assert set(pulled_uids) == set(MODALITIES)
        t1 = next(ds for ds in pulled if ds.SeriesDescription == "t1")
        t1_series, t1_uids = t1.SeriesInstanceUID, pulled_uids["t1"]

        # 3. inference on the pulled study, DICOM output on, results sent to the PACS (credentials from env)
        out = tmp_path / "pred"
        proc = _run_bundle_in_netns(pacs, "glioma_seg_idh", {
            "dataset_dir": str(dataset), "bundle_root": str(root), "output_dir": str(out), **SMALL,
            "dicom_output": "True", "pacs_dest": str(dest)}, env)
        assert pacs.password not in proc.stdout + proc.stderr
        prediction = json.loads((out / case_id / f"{case_id}_idh.json").read_text())
        assert (out / case_id / "seg.dcm").is_file() and (out / case_id / "sr.dcm").is_file()
        pending = list((tmp_path / "outbox" / "pending").glob("*")) if (tmp_path / "outbox").exists() else []
        assert pending == [], "results left in the outbox: the export failed"

        # 4. QIDO-RS: the study now holds the source series plus one SEG and one SR series
        with pacs.inside():
            series = client.search_for_series(study_uid)
            by_modality: dict[str, list[str]] = {}
            for s in series:
                by_modality.setdefault(s["00080060"]["Value"][0], []).append(s["0020000E"]["Value"][0])
            # ... and one Secondary Capture series (modality OT) of key slices
            assert sorted(by_modality) == ["MR", "OT", "SEG", "SR"]
            assert len(by_modality["MR"]) == 3 and all(len(by_modality[m]) == 1 for m in ("OT", "SEG", "SR"))
            seg_list = client.retrieve_series(study_uid, by_modality["SEG"][0])
            sr_list = client.retrieve_series(study_uid, by_modality["SR"][0])
            sc_list = client.retrieve_series(study_uid, by_modality["OT"][0])
        assert len(seg_list) == 1 and len(sr_list) == 1
        seg, sr = seg_list[0], sr_list[0]
        written_sc = sorted((out / case_id).glob("sc_*.dcm"))
        assert 1 <= len(sc_list) == len(written_sc) <= 5

    # 5. the retrieved objects: valid, and referencing the pulled study, the source images and each other
    for name, ds in (("seg.dcm", seg), ("sr.dcm", sr)):
        path = tmp_path / f"retrieved_{name}"
        ds.save_as(path, enforce_file_format=True)
        _assert_valid(str(path))
    one_per_series = {desc: dataset / case_id / desc / f"{sorted(uids)[0]}.dcm" for desc, uids in pulled_uids.items()}
    for path in one_per_series.values():  # the pulled source images too
        _assert_valid(str(path))

    assert seg.SOPClassUID == SEG_SOP_CLASS and sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
    assert len(seg.ReferencedSeriesSequence) == 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1_series
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == t1_uids
    frame_sources = {
        src.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }
    assert frame_sources and frame_sources <= t1_uids
    assert int(seg.NumberOfFrames) == len(t1_uids)  # one frame per source slice

    evidence = _evidence_uids(sr)
    assert seg.SOPInstanceUID in evidence  # the SR references the SEG ...
    assert t1_uids <= evidence  # ... and the source images
    seg_refs = {sop.ReferencedSOPInstanceUID for item in _sr_items(sr) for sop in item.get("ReferencedSOPSequence", [])}
    assert seg.SOPInstanceUID in seg_refs  # a measurement group points at the SEG's segment
    assert _sr_num(sr, IDH_CODE) == pytest.approx(prediction["idh_probability"], abs=1e-6)

    # 6. the SCs from the PACS: valid, in the study, each referencing a t1 slice, outlined where the SEG's boundary is
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    pulled_t1 = {ds.SOPInstanceUID: ds for ds in pulled if ds.SeriesDescription == "t1"}
    for k, ds in enumerate(sc_list):
        assert ds.SOPClassUID == SC_SOP_CLASS
        path = tmp_path / f"retrieved_sc_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        source = pulled_t1[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        n_segments = len(seg.SegmentSequence)
        mask = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], skip_overlap_checks=True,
        )[0] if source.SOPInstanceUID in frame_sources else np.zeros((source.Rows, source.Columns, n_segments), bool)
        assert_secondary_capture(str(path), source, mask)
    assert any(ds.SourceImageSequence[0].ReferencedSOPInstanceUID in frame_sources for ds in sc_list), (
        "no SC shows a segmented slice")


def _fundus_rgb(tmp_path: Path, synthetic: Path) -> np.ndarray:
    """One real Drishti-GS1 photograph (shrunk to 384 px on the long side) when present, else a synthetic one."""
    images = sorted((REAL_DATA / "drishti_gs1" / "images").glob("*.jpg"))
    if images:
        img = Image.open(images[-1]).convert("RGB")  # an official test image
        img.thumbnail((384, 384))
        return np.asarray(img)
    return np.asarray(Image.open(synthetic / "images" / "fundus_000.jpg").convert("RGB"))


def test_fundus_dicom_photo_from_orthanc_to_seg_and_sr_in_orthanc(tmp_path, bundle_data, trained_bundle):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    small = SPECS["fundus_glaucoma"].small
    data, root = bundle_data("fundus_glaucoma"), trained_bundle("fundus_glaucoma")
    photo = write_photo(_fundus_rgb(tmp_path, data), tmp_path / "modality" / "eye.dcm", patient_id="EYE1")
    source = pydicom.dcmread(photo)

    with OrthancServer() as pacs:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", MTL_PACS_USER=pacs.username,
                   MTL_PACS_PASSWORD=pacs.password, MTL_PACS_OUTBOX=str(tmp_path / "outbox"))
        dest = tmp_path / "dest.json"
        dest.write_text(json.dumps(pacs.destination(protocol="stow")))
        push = subprocess.run(
            pacs.netns_cmd(sys.executable, "-m", "common.pacs", "send", "--dest", str(dest),
                           "--outbox", str(tmp_path / "push_outbox"), str(photo)),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert push.returncode == 0, push.stdout + push.stderr
        with pacs.inside():
            client = DICOMwebClient(url=pacs.dicomweb_url,
                                    session=create_session_from_user_pass(pacs.username, pacs.password))
            pulled = client.retrieve_instance(source.StudyInstanceUID, source.SeriesInstanceUID,
                                              source.SOPInstanceUID)
        images = tmp_path / "pulled" / "images"
        images.mkdir(parents=True)
        pulled.save_as(images / "eye_pulled.dcm", enforce_file_format=True)
        np.testing.assert_array_equal(pydicom.dcmread(images / "eye_pulled.dcm").pixel_array, source.pixel_array)

        out = tmp_path / "pred"
        proc = _run_bundle_in_netns(pacs, "fundus_glaucoma", {
            "dataset_dir": str(tmp_path / "pulled"), "bundle_root": str(root), "output_dir": str(out), **small,
            "dicom_output": "True", "pacs_dest": str(dest)}, env)
        assert pacs.password not in proc.stdout + proc.stderr
        prediction = json.loads((out / "eye_pulled" / "eye_pulled_glaucoma.json").read_text())

        with pacs.inside():
            series = client.search_for_series(source.StudyInstanceUID)
            by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in series}
            assert sorted(by_modality) == ["OP", "OT", "SEG", "SR"]
            seg = client.retrieve_series(source.StudyInstanceUID, by_modality["SEG"])[0]
            sr = client.retrieve_series(source.StudyInstanceUID, by_modality["SR"])[0]
            sc = client.retrieve_series(source.StudyInstanceUID, by_modality["OT"])

    for name, ds in (("seg.dcm", seg), ("sr.dcm", sr)):
        path = tmp_path / f"retrieved_{name}"
        ds.save_as(path, enforce_file_format=True)
        _assert_valid(str(path))
    _assert_valid(str(images / "eye_pulled.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["optic_disc", "optic_cup"]
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [i.ReferencedSOPInstanceUID for i in referenced] == [source.SOPInstanceUID]
    # an Ophthalmic Photography 8 Bit source, referenced with its own SOP class
    assert source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    assert [i.ReferencedSOPClassUID for i in referenced] == [source.SOPClassUID]
    derivations = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
    assert [(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID) for i in derivations] == [
        (source.SOPInstanceUID, source.SOPClassUID)]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    listed = {(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID) for e in evidence for i in e.ReferencedSOPSequence}
    assert listed == {(source.SOPInstanceUID, source.SOPClassUID), (seg.SOPInstanceUID, seg.SOPClassUID)}
    assert (int(seg.Rows), int(seg.Columns)) == source.pixel_array.shape[:2]
    assert seg.SOPInstanceUID in _evidence_uids(sr) and source.SOPInstanceUID in _evidence_uids(sr)
    assert _sr_num(sr, "GLAUCOMA_PROB") == pytest.approx(prediction["glaucoma_probability"], abs=1e-6)
    assert _sr_num(sr, "VCDR") == pytest.approx(prediction["vcdr"], abs=1e-6)
    # the Secondary Capture: one, valid, in the photograph's study, disc and cup outlined where the SEG's masks are
    assert len(sc) == 1 and sc[0].SOPClassUID == SC_SOP_CLASS
    sc[0].save_as(tmp_path / "retrieved_sc.dcm", enforce_file_format=True)
    masks = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], skip_overlap_checks=True)[0]
    assert masks.shape == (source.Rows, source.Columns, 2)
    assert_secondary_capture(str(tmp_path / "retrieved_sc.dcm"), source, masks)
