"""MONAI Label serving: export tiny trained bundles, start a real ``monailabel start_server`` on 127.0.0.1 from
.venv-monailabel, and infer on studies from a local folder (segmentation + classification, and risk factors).

The server tests skip where ``.venv-monailabel`` is absent (``bash scripts/install_monailabel.sh`` makes it).
"""

from __future__ import annotations

import contextlib
import email.parser
import gzip
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.bundle_cli import REPO

# the MONAI Label environment: $MONAILABEL_VENV (scripts/run_tests.sh sets it), else ./.venv-monailabel
VENV_PY = Path(os.environ.get("MONAILABEL_VENV") or REPO / ".venv-monailabel") / "bin" / "python"
EXPORTER = REPO / "scripts" / "export_monailabel_bundle.py"
needs_venv = pytest.mark.skipif(
    not VENV_PY.exists(), reason=f"{VENV_PY.parents[1]} is absent: run `bash scripts/install_monailabel.sh` to make it"
)
MODELS = ("glioma_seg_idh", "fundus_glaucoma", "cmr_fundus")
# the tiny networks of the session's trained models (tests/bundle_specs.py); passed to the exporter with --set
SMALL = {
    "glioma_seg_idh": {"features": [4, 8, 16], "patch_size": 16},
    "fundus_glaucoma": {"features": [4, 8, 16], "crop_size": 32, "locator_size": 32,
                        "locator_features": [4, 4, 8, 16, 32, 4]},
    "cmr_fundus": {"image_size": 32, "min_image_size": 32, "encoder_channels": [8, 8, 16, 16], "expert_dim": 8,
                   "hidden_dim": 8},
}


def _exporter():
    """The exporter script as a module (in-process exports save a python start-up each)."""
    spec = importlib.util.spec_from_file_location("export_monailabel_bundle", EXPORTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(bundle: str, out: Path, models: Path, overrides: dict, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(EXPORTER), bundle, str(out), "--models", str(models)]
    cmd += [x for k, v in overrides.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"export of {bundle} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundle_data, trained_bundle) -> dict[str, Path]:
    """Each bundle's tiny model of the session (tests/conftest.py: trained with the SMALL networks above); return
    bundle -> its models folder, and "data" -> a folder linking the synthetic data sets as brats, fundus and cmr."""
    data = tmp_path_factory.mktemp("monailabel_data")
    for name, bundle in (("brats", "glioma_seg_idh"), ("fundus", "fundus_glaucoma"), ("cmr", "cmr_fundus")):
        (data / name).symlink_to(bundle_data(bundle), target_is_directory=True)
    return {**{bundle: trained_bundle(bundle) / "models" for bundle in MODELS}, "data": data}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained) -> Path:
    out = tmp_path_factory.mktemp("monailabel_bundles")
    exporter = _exporter()
    for bundle in MODELS:
        assert exporter.export_bundle(bundle, out, trained[bundle], SMALL[bundle]) == out / bundle
    return out


@pytest.mark.slow
def test_export_is_self_contained(exported):
    for bundle in MODELS:
        folder = exported / bundle
        for part in ("configs/inference.json", "configs/metadata.json", "LICENSE", "docs", "models/model.pt",
                     "common/__init__.py", "common/networks/__init__.py"):
            assert (folder / part).exists(), f"{bundle}: {part} missing"
        assert not list((folder / "models").glob("*resume*")), "resume checkpoints are not exported"
        config = json.loads((folder / "configs" / "inference.json").read_text())
        for key, value in SMALL[bundle].items():
            if key in config:
                assert config[key] == value
    assert (exported / "fundus_glaucoma" / "models" / "locator.pt").is_file()
    assert (exported / "fundus_glaucoma" / "models" / "glaucoma_score.json").is_file()


@pytest.mark.slow
def test_export_rejects_a_checkpoint_that_does_not_fit(trained, tmp_path):
    with pytest.raises(ValueError, match="model.pt: does not fit the exported network_def"):
        _exporter().export_bundle("cmr_fundus", tmp_path, trained["cmr_fundus"])  # trained with SMALL, no --set
    assert not (tmp_path / "cmr_fundus").exists(), "a failed export leaves no half-written bundle"


def test_export_bad_arguments_give_one_clear_error(tmp_path):
    proc = _export("glioma_seg_idh", tmp_path, tmp_path / "no_models", {}, check=False)
    assert proc.returncode == 2 and "holds no model.pt" in proc.stderr and "no_models" in proc.stderr
    proc = _export("no_such_bundle", tmp_path, tmp_path, {}, check=False)
    assert proc.returncode == 2 and "no_such_bundle" in proc.stderr and "not a bundle folder" in proc.stderr
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    proc = _export("glioma_seg_idh", tmp_path / "out", tmp_path / "models", {"no_such_key": 1}, check=False)
    assert proc.returncode == 2 and "no_such_key" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _post(url: str, timeout: float = 120) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=b"params=%7B%7D", method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """Parts of a multipart/form-data response, by field name."""
    msg = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.get_payload()}


@pytest.fixture(scope="module")
def studies(tmp_path_factory, trained) -> dict[str, Path]:
    """A local studies folder: a 4-D multi-modal NIfTI, a fundus photograph and a CMR-fundus photograph."""
    folder = tmp_path_factory.mktemp("studies")
    data = trained["data"]
    modalities = json.loads((REPO / "bundles/glioma_seg_idh/configs/inference.json").read_text())["modalities"]
    case = sorted(p for p in (data / "brats").iterdir() if p.is_dir())[0]
    first = nib.load(case / f"{case.name}_{modalities[0]}.nii.gz")
    stacked = np.stack([np.asarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj) for m in modalities], -1)
    nib.save(nib.Nifti1Image(stacked.astype(np.float32), first.affine), folder / "brain_001.nii.gz")
    shutil.copy(sorted((data / "fundus" / "images").glob("*.jpg"))[0], folder / "fundus_001.jpg")
    shutil.copy(sorted((data / "cmr" / "images").glob("*.png"))[0], folder / "retina_001.png")
    return {"folder": folder, "brain": folder / "brain_001.nii.gz", "fundus": folder / "fundus_001.jpg",
            "retina": folder / "retina_001.png"}


@contextlib.contextmanager
def _monailabel_server(work: Path, studies: Path, bundles: Path, models: Sequence[str], *conf: str):
    """A real MONAI Label server (venv python) on a free port, app copied into ``work``; stopped by PID at the end.
    Yields ``{"url", "info", "log"}``."""
    app = work / "app"
    shutil.copytree(REPO / "monailabel_app", app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin",
                                                                                 "train"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `common` must come from the bundles
    env.update(PATH=f"{VENV_PY.parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", HOME=str(work),
               MONAI_LABEL_TRACKING_ENABLED="false", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false")
    cmd = [str(VENV_PY), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "bundles", str(bundles), "--conf", "models", ",".join(models), *conf,
           "--host", "127.0.0.1", "--port", str(port)]
    log_path = work / "server.log"
    log = open(log_path, "w")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        info = None
        while time.monotonic() - start < 180:
            if proc.poll() is not None:
                raise AssertionError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-6000:]}")
            try:
                status, body, _ = _get(f"{url}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert info is not None, f"server did not answer /info/ in 180 s:\n{log_path.read_text()[-6000:]}"
        print(f"MONAI Label server up in {time.monotonic() - start:.1f} s")
        yield {"url": url, "info": info, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported, studies):
    """A real MONAI Label server serving the exported bundles on the studies folder (inference only)."""
    if not VENV_PY.exists():
        pytest.skip(f"{VENV_PY.parents[1]} is absent: run `bash scripts/install_monailabel.sh` to make it")
    with _monailabel_server(tmp_path_factory.mktemp("monailabel_server"), studies["folder"], exported, MODELS) as s:
        yield s


@needs_venv
@pytest.mark.slow
def test_info_lists_every_model_with_its_type(server):
    models = server["info"]["models"]
    assert set(MODELS) <= set(models)
    assert models["glioma_seg_idh"]["type"] == "segmentation" and models["glioma_seg_idh"]["dimension"] == 3
    assert models["glioma_seg_idh"]["labels"] == {"tumour": 1}
    assert models["fundus_glaucoma"]["labels"] == {"optic_disc": 1, "optic_cup": 2}
    assert models["cmr_fundus"]["type"] == "classification"
    assert server["info"]["datastore"]["total"] == 3
    assert {"brain_001", "fundus_001", "retina_001"} == _image_ids(server)


def _image_ids(server) -> set[str]:
    status, body, _ = _get(f"{server['url']}/datastore/?output=all")
    assert status == 200, body[:500]
    return set(json.loads(body)["objects"])


@needs_venv
@pytest.mark.slow
def test_glioma_label_in_image_space_with_idh_probability(server, studies):
    status, body, ctype = _post(f"{server['url']}/infer/glioma_seg_idh?image=brain_001")
    assert status == 200, body[:2000]
    parts = _multipart(body, ctype)
    result = json.loads(parts["params"])
    assert 0.0 <= result["idh_probability"] <= 1.0
    assert result["idh_prediction"] in ("wildtype", "mutant")
    label = nib.Nifti1Image.from_bytes(gzip.decompress(parts["image"]))
    image = nib.load(studies["brain"])
    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 1}
    assert int((values > 0).sum()) == result["tumour_voxels"]


@needs_venv
@pytest.mark.slow
def test_fundus_label_png_with_glaucoma_probability(server, studies):
    status, body, ctype = _post(f"{server['url']}/infer/fundus_glaucoma?image=fundus_001")
    assert status == 200, body[:2000]
    parts = _multipart(body, ctype)
    result = json.loads(parts["params"])
    assert 0.0 <= result["glaucoma_probability_head"] <= 1.0
    if result["glaucoma_probability"] is not None:
        assert 0.0 <= result["glaucoma_probability"] <= 1.0
    label = np.asarray(Image.open(io.BytesIO(parts["image"])))
    width, height = Image.open(studies["fundus"]).size
    assert label.shape == (height, width)
    assert set(np.unique(label).tolist()) <= {0, 1, 2}
    assert int((label >= 1).sum()) == result["disc_pixels"] and int((label == 2).sum()) == result["cup_pixels"]


@needs_venv
@pytest.mark.slow
def test_cmr_fundus_classification_returns_every_factor(server):
    status, body, ctype = _post(f"{server['url']}/infer/cmr_fundus?image=retina_001")
    assert status == 200, body[:2000]
    assert ctype.startswith("application/json"), ctype  # no label image for a classification model
    result = json.loads(body)
    factors = json.loads((REPO / "bundles/cmr_fundus/configs/factors.json").read_text())["factors"]
    names = [f["name"] + ("_probability" if f["kind"] == "binary" else "") for f in factors]
    assert list(result["measurements"]) == names
    assert 0.0 <= result["measurements"]["sex_probability"]["value"] <= 1.0 and result["sex_prediction"] in (0, 1)
    age = result["measurements"]["age"]
    assert age["unit"] == "years" and np.isfinite(age["value"]) and result["age"] == age["value"]


@needs_venv
@pytest.mark.slow
def test_wrong_study_for_a_model_gives_a_clear_error(server):
    status, body, _ = _post(f"{server['url']}/infer/glioma_seg_idh?image=fundus_001")
    assert status >= 400
    assert "fundus_001.jpg" in server["log"].read_text() or b"fundus_001" in body


_TASK_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])  # monailabel_app: lib.infers
from lib.infers.bundle_evaluator import BundleEvaluatorInferTask
import nibabel as nib, numpy as np
out = {}
for key, bundle, image in json.loads(sys.argv[2]):
    try:
        label, result = BundleEvaluatorInferTask(sys.argv[3] + "/" + bundle)({"image": image})
    except Exception as e:  # the error the server would answer with
        out[key] = {"error": f"{type(e).__name__}: {e}"}
        continue
    if label and label.endswith(".nii.gz"):
        result["label_sum"], result["label_shape"] = int(nib.load(label).get_fdata().sum()), nib.load(label).shape
        np.save(sys.argv[4] + "/" + key + ".npy", np.asarray(nib.load(label).dataobj))
    elif label:
        from PIL import Image
        np.save(sys.argv[4] + "/" + key + ".npy", np.asarray(Image.open(label)))
    out[key] = result
print("RESULTS " + json.dumps(out, default=str))
"""


@needs_venv
@pytest.mark.slow
def test_task_accepts_dicom_series_and_study_folders(exported, studies, trained, tmp_path):
    """The infer task, in the MONAI Label venv (pydicom 2.x), on what MONAI Label hands over for DICOM: a study
    folder (glioma: its series mapped to t1/t1ce/flair by the modality rule) and a folder with one photograph
    (fundus) give the results of the same images as NIfTI/JPEG; a single series lacking modalities is refused."""
    from common.dicom import nifti_case_to_dicom, write_photo

    case = sorted(p for p in (trained["data"] / "brats").iterdir() if p.is_dir())[0]
    study = tmp_path / "study_001"
    nifti_case_to_dicom(case, study, modalities=["t1", "t1ce", "flair", "t2"])  # t2: an extra series, ignored
    photo_dir = tmp_path / "1.2.826.0.1.3680043.8.498.1"  # a DICOMweb series folder is named by its UID
    write_photo(np.asarray(Image.open(studies["fundus"]).convert("RGB")), photo_dir / "image.dcm")
    jobs = [["study", "glioma_seg_idh", str(study)], ["nifti", "glioma_seg_idh", str(studies["brain"])],
            ["photo", "fundus_glaucoma", str(photo_dir)], ["jpg", "fundus_glaucoma", str(studies["fundus"])],
            ["one_series", "glioma_seg_idh", str(study / "flair")]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `common` must come from the bundles
    env.update(OMP_NUM_THREADS="1")
    proc = subprocess.run([str(VENV_PY), "-c", _TASK_SCRIPT, str(REPO / "monailabel_app"), json.dumps(jobs),
                           str(exported), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    for key in ("study", "nifti", "photo", "jpg"):
        assert "error" not in results[key], results[key]
    # DICOM voxels are the NIfTI ones quantised to 16 bits: same IDH probability and (nearly) the same label map
    assert results["study"]["idh_probability"] == pytest.approx(results["nifti"]["idh_probability"], abs=1e-3)
    a, b = np.load(tmp_path / "study.npy"), np.load(tmp_path / "nifti.npy")
    assert a.shape == b.shape and np.mean(a == b) > 0.999
    # the photograph: same pixels, same results and label PNG
    for key in ("glaucoma_probability", "vcdr"):
        assert results["photo"][key] == pytest.approx(results["jpg"][key], abs=1e-6), key
    assert np.array_equal(np.load(tmp_path / "photo.npy"), np.load(tmp_path / "jpg.npy"))
    # one series where three modalities are needed: one error naming the folder and the missing modalities
    error = results["one_series"]["error"]
    assert str(study / "flair") in error and "t1" in error, error


@needs_venv
@pytest.mark.slow
def test_server_on_orthanc_dicomweb_datastore(exported, studies, trained, tmp_path):
    """MONAI Label's datastore is a real Orthanc's DICOMweb (authentication on, loopback-only namespace): it lists
    the series stored there, and the segmentation bundles infer on a series UID (glioma: the task fetches the rest
    of the study by DICOMweb) with the results the same images give from local files."""
    from common.dicom import nifti_case_to_dicom, write_photo
    from tests.orthanc_server import OrthancServer

    case = sorted(p for p in (trained["data"] / "brats").iterdir() if p.is_dir())[0]
    study = tmp_path / "study"
    written = nifti_case_to_dicom(case, study, modalities=["t1", "t1ce", "flair"])
    photo = write_photo(np.asarray(Image.open(studies["fundus"]).convert("RGB")), tmp_path / "photo" / "eye.dcm")
    t1_series = str(pydicom_header(written["t1"][0]).SeriesInstanceUID)
    photo_series = str(pydicom_header(photo).SeriesInstanceUID)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1")
    # expected: the task on the local copies (no DICOMweb)
    jobs = [["study", "glioma_seg_idh", str(study)], ["photo", "fundus_glaucoma", str(photo.parent)]]
    local = subprocess.run([str(VENV_PY), "-c", _TASK_SCRIPT, str(REPO / "monailabel_app"), json.dumps(jobs),
                            str(exported), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert local.returncode == 0, local.stderr[-4000:]
    expected = json.loads(next(line for line in local.stdout.splitlines() if line.startswith("RESULTS "))[8:])

    with OrthancServer() as pacs:
        dest = tmp_path / "dest.json"
        dest.write_text(json.dumps(pacs.destination()))
        push = subprocess.run(
            pacs.netns_cmd(sys.executable, "-m", "common.pacs", "send", "--dest", str(dest), "--outbox",
                           str(tmp_path / "outbox"), str(study), str(photo)),
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), MTL_PACS_USER=pacs.username,
                               MTL_PACS_PASSWORD=pacs.password), capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stdout + push.stderr

        work = tmp_path / "server"
        app = work / "app"
        shutil.copytree(REPO / "monailabel_app", app,
                        ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin"))
        server_env = dict(env, PATH=f"{VENV_PY.parent}{os.pathsep}{env.get('PATH', '')}", HOME=str(work),
                          MONAI_LABEL_TRACKING_ENABLED="false", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
                          MONAI_LABEL_DICOMWEB_USERNAME=pacs.username, MONAI_LABEL_DICOMWEB_PASSWORD=pacs.password,
                          MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI="false",
                          # MONAI Label lists only CT series by default; here every series (MR and OP)
                          MONAI_LABEL_DICOMWEB_SEARCH_FILTER="{}",
                          MONAI_LABEL_DICOMWEB_CACHE_PATH=str(work / "cache"))
        cmd = pacs.netns_cmd(str(VENV_PY), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies",
                             pacs.dicomweb_url, "--conf", "bundles", str(exported), "--conf", "models",
                             "glioma_seg_idh,fundus_glaucoma", "--host", "127.0.0.1", "--port", "8000")
        log_path = work / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=work, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        url = "http://127.0.0.1:8000"
        try:
            with pacs.inside():
                start, info = time.monotonic(), None
                while time.monotonic() - start < 180 and info is None:
                    if proc.poll() is not None:
                        raise AssertionError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-6000:]}")
                    try:
                        status, body, _ = _get(f"{url}/info/", timeout=5)
                        info = json.loads(body) if status == 200 else None
                    except OSError:
                        pass
                    time.sleep(0.5)
                assert info is not None, f"no /info/ in 180 s:\n{log_path.read_text()[-6000:]}"
                # the datastore lists Orthanc's series by QIDO-RS (its local cache stays empty until a fetch)
                status, body, _ = _get(f"{url}/datastore/?output=stats")
                assert status == 200, body[:500]
                assert json.loads(body)["total"] == 4  # t1, t1ce, flair and the photograph
                results = {}
                for key, model, series in (("photo", "fundus_glaucoma", photo_series),
                                           ("study", "glioma_seg_idh", t1_series)):
                    status, body, _ = _post(f"{url}/infer/{model}?image={series}&output=json", timeout=300)
                    assert status == 200, body[:2000].decode(errors="replace") + log_path.read_text()[-4000:]
                    results[key] = json.loads(body)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
    assert pacs.password not in log_path.read_text()
    for key in ("glaucoma_probability", "vcdr"):
        assert results["photo"][key] == pytest.approx(expected["photo"][key], abs=1e-6), key
    assert results["study"]["idh_probability"] == pytest.approx(expected["study"]["idh_probability"], abs=1e-6)
    assert results["study"]["tumour_voxels"] == expected["study"]["tumour_voxels"]


def pydicom_header(path):
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True)


# --- training and active learning ----------------------------------------------------------------------------------


def _put_label(url: str, image: str, label: bytes, filename: str, info: dict) -> tuple[int, dict]:
    """``PUT /datastore/label`` of a final label with its label info (multipart form, as 3D Slicer sends it)."""
    boundary = "mtl-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(info)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + label + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/datastore/label?image={image}&tag=final", data=body, method="PUT")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _put_info(url: str, label: str, info: dict) -> tuple[int, dict]:
    """``PUT /datastore/label/info`` of a final label (form field ``info``)."""
    data = urllib.parse.urlencode({"info": json.dumps(info)}).encode()
    req = urllib.request.Request(f"{url}/datastore/label/info?label={label}&tag=final", data=data, method="PUT")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _post_json(url: str, params: dict, timeout: float = 300) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(params).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_training(url: str, log: Path, timeout: float = 300) -> dict:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        status, body, _ = _get(f"{url}/train/")
        task = json.loads(body) if status == 200 else {}
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(1)
    raise AssertionError(f"training did not end in {timeout} s:\n{log.read_text()[-5000:]}")


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, affine).to_bytes())


def _png_bytes(data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG")
    return buffer.getvalue()


@needs_venv
@pytest.mark.slow
def test_train_from_datastore_labels_and_pick_by_uncertainty(exported, trained, tmp_path):
    """Label studies over HTTP with their task labels (label info), train the bundles' own train.json on them through
    POST /train, infer with the published model, and let the uncertainty strategies pick an unlabelled study of
    their model; bad labels and a training without labels give one clear HTTP error and change nothing."""
    bundles = tmp_path / "bundles"
    for bundle in ("glioma_seg_idh", "fundus_glaucoma"):  # a copy: training replaces their models
        shutil.copytree(exported / bundle, bundles / bundle)
    data, folder = trained["data"], tmp_path / "studies"
    folder.mkdir()
    modalities = json.loads((REPO / "bundles/glioma_seg_idh/configs/inference.json").read_text())["modalities"]
    brains: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # study -> (tumour label map, affine)
    for k, case in enumerate(sorted(p for p in (data / "brats").iterdir() if p.is_dir())[:4], start=1):
        first = nib.load(case / f"{case.name}_{modalities[0]}.nii.gz")
        stacked = np.stack([np.asarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj) for m in modalities], -1)
        nib.save(nib.Nifti1Image(stacked.astype(np.float32), first.affine), folder / f"brain_{k:03d}.nii.gz")
        seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
        brains[f"brain_{k:03d}"] = ((seg > 0).astype(np.uint8), first.affine)
    eyes: dict[str, np.ndarray] = {}  # study -> disc/cup label map
    for k, photo in enumerate(sorted((data / "fundus" / "images").glob("*.jpg"))[:5], start=1):
        shutil.copy(photo, folder / f"eye_{k:03d}.jpg")
        disc = np.asarray(Image.open(data / "fundus" / "masks" / f"{photo.stem}_disc.png").convert("L")) > 127
        cup = np.asarray(Image.open(data / "fundus" / "masks" / f"{photo.stem}_cup.png").convert("L")) > 127
        eyes[f"eye_{k:03d}"] = (disc.astype(np.uint8) + (cup & disc)).astype(np.uint8)
    model_file = bundles / "glioma_seg_idh" / "models" / "model.pt"
    before = model_file.read_bytes()

    with _monailabel_server(tmp_path / "server", folder, bundles, ["glioma_seg_idh", "fundus_glaucoma"],
                            "--conf", "epochs", "1") as server:
        url, log = server["url"], server["log"]
        assert set(server["info"]["trainers"]) == {"glioma_seg_idh", "fundus_glaucoma"}
        assert {"random", "first", "glioma_seg_idh_uncertainty", "fundus_glaucoma_uncertainty"} <= set(
            server["info"]["strategies"])
        # no labelled study yet: refused at once, naming the model and what is missing
        status, answer = _post_json(f"{url}/train/glioma_seg_idh", {"max_epochs": 1})
        assert status == 422 and "no labelled study" in answer["detail"] and "glioma_seg_idh" in answer["detail"]
        status, _, _ = _get(f"{url}/train/")
        assert status == 404, "no training task was started"
        status, body, _ = _post(f"{url}/infer/glioma_seg_idh?image=brain_004&output=json")
        assert status == 200, body[:2000]
        before_json = json.loads(body)

        # bad labels: an unknown study, a task label outside the allowed values; nothing is saved
        label, affine = brains["brain_001"]
        status, answer = _put_label(url, "no_such_study", _nifti_bytes(label, affine), "x.nii.gz", {})
        assert status == 404 and "no_such_study" in answer["detail"], answer
        status, answer = _put_label(url, "brain_001", _nifti_bytes(label, affine), "brain_001.nii.gz",
                                    {"idh_status": "maybe"})
        assert status == 422 and "brain_001" in answer["detail"] and "idh_status='maybe'" in answer["detail"], answer
        status, answer = _put_label(url, "eye_001", _png_bytes(eyes["eye_001"]), "eye_001.png", {"cdr": 1.7})
        assert status == 422 and "eye_001" in answer["detail"] and "cdr" in answer["detail"], answer
        status, body, _ = _get(f"{url}/datastore/?output=all")
        assert all(not obj["labels"] for obj in json.loads(body)["objects"].values()), "a refused label was saved"

        # labels with their task labels (label info); brain_004 and eye_005 stay unlabelled
        idh = ["mutant", "wildtype", "unknown"]
        for k, study in enumerate(["brain_001", "brain_002", "brain_003"]):
            label, affine = brains[study]
            status, answer = _put_label(url, study, _nifti_bytes(label, affine), f"{study}.nii.gz",
                                        {"idh_status": idh[k]})
            assert status == 200, answer
        glaucoma = [("glaucoma", 0.8), ("normal", 0.3), ("glaucoma", 0.7), ("normal", 0.4)]
        for k, study in enumerate(["eye_001", "eye_002", "eye_003", "eye_004"]):
            info = {"glaucoma": glaucoma[k][0], "cdr": glaucoma[k][1]}
            if k == 3:
                info = {"model": "fundus_glaucoma", "glaucoma": "normal", "cdr": 0.4}
            status, answer = _put_label(url, study, _png_bytes(eyes[study]), f"{study}.png", info)
            assert status == 200, answer
        status, body, _ = _get(f"{url}/datastore/label/info?label=brain_001&tag=final")
        assert json.loads(body)["idh_status"] == "mutant"
        # a task label changed later (label info update) is checked the same way; an unlabelled study has none
        status, answer = _put_info(url, "brain_002", {"idh_status": "banana"})
        assert status == 422 and "brain_002" in answer["detail"] and "banana" in answer["detail"], answer
        status, answer = _put_info(url, "brain_004", {"idh_status": "mutant"})
        assert status == 404 and "brain_004" in answer["detail"], answer
        status, body, _ = _get(f"{url}/datastore/label/info?label=brain_002&tag=final")
        assert json.loads(body)["idh_status"] == "wildtype"

        # train each model on its own studies (1 epoch): glioma in the request (run_sync), fundus in the
        # background (MONAI Label's default), waiting on GET /train
        status, answer = _post_json(f"{url}/train/glioma_seg_idh?run_sync=true",
                                    {"max_epochs": 1, "overrides": {"batch_size": 2}})
        assert status == 200, answer
        assert answer["train_studies"] == ["brain_002", "brain_003"] and answer["validation_studies"] == ["brain_001"]
        assert "model.pt" in answer["published"] and not any("resume" in f for f in answer["published"])
        assert model_file.read_bytes() != before, "the new model was not published"
        status, answer = _post_json(f"{url}/train/fundus_glaucoma",
                                    {"max_epochs": 1, "val_split": 0,
                                     "overrides": {"locator_epochs": 1, "batch_size": 2, "locator_batch_size": 2}})
        assert status == 200, answer
        task = _wait_training(url, log)
        assert task["status"] == "DONE", "\n".join(task.get("details", [])) + log.read_text()[-5000:]
        run_logs = sorted((tmp_path / "server" / "app" / "train").glob("*/args.json"))
        args = {p.parent.name.split("_2")[0]: json.loads(p.read_text()) for p in run_logs}
        glioma_cases = sorted(r["case"] for r in args["glioma_seg_idh"]["train#records"] +
                              args["glioma_seg_idh"]["validate#records"])
        assert glioma_cases == ["brain_001", "brain_002", "brain_003"]
        assert sorted(r["idh"] for r in args["glioma_seg_idh"]["train#records"] +
                      args["glioma_seg_idh"]["validate#records"]) == [-1, 0, 1]
        eye_records = args["fundus_glaucoma"]["train#records"]
        assert [r["glaucoma"] for r in eye_records] == [1, 0, 1, 0]
        mask = np.asarray(Image.open(eye_records[0]["cup"]))
        assert set(np.unique(mask).tolist()) <= {0, 255} and (mask > 0).sum() == (eyes["eye_001"] == 2).sum()

        # the infer task answers with the new weights
        status, body, _ = _post(f"{url}/infer/glioma_seg_idh?image=brain_004&output=json")
        assert status == 200, body[:2000]
        after_json = json.loads(body)
        assert after_json["idh_probability"] != before_json["idh_probability"]

        # active learning: each model's uncertainty picks its own unlabelled study
        status, answer = _post_json(f"{url}/activelearning/glioma_seg_idh_uncertainty", {})
        assert status == 200 and answer["id"] == "brain_004", answer
        assert 0.0 <= answer["uncertainty"] <= 1.0 and {"idh_margin"} <= set(answer["tasks"]), answer
        status, answer = _post_json(f"{url}/activelearning/fundus_glaucoma_uncertainty", {})
        assert status == 200 and answer["id"] == "eye_005", answer
        assert "glaucoma_margin" in answer["tasks"] and any(k.endswith("_entropy") for k in answer["tasks"]), answer
        status, answer = _post_json(f"{url}/activelearning/first", {})
        assert status == 200 and answer["id"] in ("brain_004", "eye_005"), answer


_HELPERS_SCRIPT = """
import json, math, sys
sys.path.insert(0, sys.argv[1])  # monailabel_app: lib.*
import numpy as np
from lib.strategies.uncertainty import classification_margin, segmentation_entropy
from lib.trainers.bundle_trainer import BundleTrainTask, LabelError, _cause
out = {"margin": [classification_margin(p) for p in (0.5, 0.0, 1.0, 0.75)],
       "entropy": [segmentation_entropy(np.array([-2.0, 2.0]).reshape(1, 1, 1, 2)),
                   segmentation_entropy(np.full((1, 2, 3, 3), 30.0)),
                   segmentation_entropy(np.full((1, 1, 2, 2), 0.5))]}
task = object.__new__(BundleTrainTask)
task.name = "b"
task.case_labels = {"idh": {"info_key": "idh_status", "values": {"mutant": 1, "wildtype": 0, "": -1}, "missing": -1},
                    "cdr": {"info_key": "cdr", "range": [0, 1], "missing": float("nan")}}
out["coded"] = [task.check_label_info("s1", {"idh_status": "Mutant", "cdr": 0.5}), task.check_label_info("s2", {})]
out["errors"] = []
for info in ({"idh_status": "maybe"}, {"cdr": "high"}, {"cdr": 1.5}):
    try:
        task.check_label_info("s3", info)
    except LabelError as e:
        out["errors"].append(str(e))
records = [{"case": f"c{k}"} for k in range(5)]
train, val = task.split(records, 0.2)
one_train, one_val = task.split(records[:1], 0.2)
out["split"] = [[r["case"] for r in x] for x in (train, val, one_train, one_val)]
out["cause"] = _cause("x\\nValueError: no batch\\nRuntimeError: Failed to evaluate ConfigExpression:\\n")
print("RESULTS " + json.dumps(out, default=str))
"""


@needs_venv
def test_uncertainty_scores_and_label_coding():
    """The strategy's per-task scores and the trainer's label info coding, split and error line (MONAI Label venv)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(VENV_PY), "-c", _HELPERS_SCRIPT, str(REPO / "monailabel_app")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    assert out["margin"] == [1.0, 0.0, 0.0, 0.5]
    # logits -2 and 2: p = 0.119 / 0.881 -> 0.527 bits each; logits 30: certain
    assert out["entropy"][0] == pytest.approx(0.527, abs=1e-3) and out["entropy"][1] < 1e-6
    assert out["entropy"][2] == pytest.approx(1.0)  # probabilities of 0.5 taken as they are
    assert out["coded"][0] == {"idh": 1, "cdr": 0.5}
    assert out["coded"][1]["idh"] == -1 and np.isnan(out["coded"][1]["cdr"])
    assert len(out["errors"]) == 3 and all(e.startswith("study s3: label info ") for e in out["errors"])
    assert "idh_status='maybe'" in out["errors"][0] and "['mutant', 'wildtype']" in out["errors"][0]
    assert "cdr='high'" in out["errors"][1] and "cdr=1.5" in out["errors"][2]
    train, val, one_train, one_val = out["split"]
    assert len(val) == 1 and len(train) == 4 and not set(train) & set(val)
    assert one_train == one_val == ["c0"]  # a single study validates on itself
    assert out["cause"] == "ValueError: no batch"
