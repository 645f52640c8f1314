"""Issue 18, bad input named clearly: through the real ``monai.bundle`` CLI of all four bundles, a damaged image or
volume (truncated, empty, not gzip, undecodable) stops training, evaluation and inference with exit code 1 (never
134) and a last line ``DatasetError: case '<case>', file <path>: <what is wrong>; <what to do>``, the traceback only
with ``MTL_DEBUG=1``; label files whose ids match no case are counted and reported, or stop the run when none
matches."""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import (
    DatasetError,
    attach_case_labels,
    build_fundus_datalist,
    check_label_join,
    generate_brats_like,
    generate_cmr_fundus_like,
    generate_fundus_like,
    read_factor_datalist,
)
from common.errors import dataset_error_message, read_error
from common.transforms import LoadCaseImaged
from tests.bundle_cli import REPO, run_bundle
from tests.bundle_specs import QUICK

SMALL = QUICK  # tests/bundle_specs.py: tiny settings, one locator epoch
BUNDLES = list(SMALL)
NIFTI_BUNDLES = ["brats_mtl", "glioma_seg_idh"]
PHOTO_BUNDLES = ["fundus_glaucoma", "cmr_fundus"]
# what a damage does to a file, and the words the error must use for it
DAMAGES = {
    "truncated": "is truncated",
    "empty": "is empty (0 bytes)",
    "not_gzip": "is named .gz but is not gzip-compressed",
    "undecodable": "is not an image file in a format that can be read",
}
TODO = "replace it with an intact copy"


def _generate(bundle: str, out: Path) -> Path:
    if bundle in NIFTI_BUNDLES:
        generate_brats_like(out, n_cases=6, shape=(32, 32, 12), seed=3)
        return out
    if bundle == "fundus_glaucoma":
        return generate_fundus_like(out, n_images=12, size=(160, 176), seed=3)
    return generate_cmr_fundus_like(out, n_patients=8, size=48, seed=3)


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory) -> Callable[[str], Path]:
    """The synthetic data set of a bundle, generated on first use."""
    made: dict[str, Path] = {}

    def get(bundle: str) -> Path:
        if bundle not in made:
            made[bundle] = Path(_generate(bundle, tmp_path_factory.mktemp(bundle)))
        return made[bundle]

    return get


def _victims(bundle: str, data: Path) -> list[Path]:
    """Files of one kind that every run of the bundle reads: one modality of each case, or every photograph."""
    if bundle in NIFTI_BUNDLES:
        return sorted(data.glob("*/*_t1ce.nii.gz"))
    return sorted((data / "images").iterdir())


def _damage(path: Path, damage: str) -> None:
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_gzip":
        path.write_bytes(gzip.decompress(data))  # an uncompressed NIfTI file left with its .nii.gz name
    else:
        path.write_bytes(np.random.default_rng(0).bytes(3000))


def _damaged_copy(src: Path, dst: Path, bundle: str, damage: str, only_first: bool = False) -> list[Path]:
    shutil.copytree(src, dst)
    victims = _victims(bundle, dst)[:1] if only_first else _victims(bundle, dst)
    for path in victims:
        _damage(path, damage)
    return victims


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def _assert_clean_failure(proc: subprocess.CompletedProcess, words: str, victims: list[Path]) -> re.Match:
    """Exit code 1, no traceback, and a last stderr line naming a damaged file, its case and the problem."""
    last = _last_line(proc)
    assert proc.returncode == 1, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, (proc.stdout + proc.stderr)[-3000:]  # none, nor logged
    match = re.match(r"DatasetError: case '([^']+)', file (\S+): (.*)$", last)
    assert match, f"last line is not the data error: {last!r}\n{proc.stderr[-3000:]}"
    case, path, problem = match.groups()
    assert Path(path) in victims, (path, victims)
    assert case in Path(path).name, (case, path)  # the case id is part of every file name of these layouts
    assert problem.startswith(words) and TODO in problem, problem
    assert "MTL_DEBUG=1" in proc.stderr.strip().splitlines()[-2]
    return match


_TRAIN_CASES = [(b, d) for b in BUNDLES for d in ("truncated", "empty")]
_TRAIN_CASES += [(b, "not_gzip") for b in NIFTI_BUNDLES] + [(b, "undecodable") for b in PHOTO_BUNDLES]
_FAST = {("glioma_seg_idh", "truncated"), ("fundus_glaucoma", "truncated")}  # the rest: -m slow (10-20 s each)
_TRAIN_CASES = [pytest.param(*c, marks=() if c in _FAST else pytest.mark.slow) for c in _TRAIN_CASES]


@pytest.mark.parametrize("bundle, damage", _TRAIN_CASES)
def test_training_on_a_damaged_file_ends_with_one_line_naming_it(bundle, damage, data_sets, tmp_path):
    victims = _damaged_copy(data_sets(bundle), tmp_path / "data", bundle, damage)
    over = {"dataset_dir": str(tmp_path / "data"), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL[bundle]}
    proc = run_bundle(bundle, "train.json", over, check=False, timeout=300)
    _assert_clean_failure(proc, DAMAGES[damage], victims)
    assert not list((tmp_path / "b" / "models").glob("*.pt")), "a model was saved from damaged data"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["glioma_seg_idh", "fundus_glaucoma"])
def test_debug_setting_shows_the_traceback_and_still_ends_with_the_error(bundle, data_sets, tmp_path, monkeypatch):
    victims = _damaged_copy(data_sets(bundle), tmp_path / "data", bundle, "truncated")
    over = {"dataset_dir": str(tmp_path / "data"), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL[bundle]}
    monkeypatch.setenv("MTL_DEBUG", "1")
    proc = run_bundle(bundle, "train.json", over, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr
    last = _last_line(proc)
    assert last.startswith("DatasetError: case '") and any(str(v) in last for v in victims), last


# ------------------------------------------------------------------------------------- evaluation and inference


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_sets) -> Callable[[str], Path]:
    """The bundle root of a model of the bundle trained one epoch on its synthetic set, trained on first use."""
    roots: dict[str, Path] = {}

    def get(bundle: str) -> Path:
        if bundle not in roots:
            root = tmp_path_factory.mktemp(f"{bundle}_bundle")
            over = {"dataset_dir": str(data_sets(bundle)), "bundle_root": str(root), "epochs": 1, "val_interval": 1}
            over.update(SMALL[bundle])
            run_bundle(bundle, "train.json", over, timeout=600)
            roots[bundle] = root
        return roots[bundle]

    return get


def _inference_input(bundle: str, data: Path, dst: Path) -> Path:
    """The input folder of inference.json: the cases without labels, or the photographs (in ``images/``)."""
    if bundle in NIFTI_BUNDLES:
        for case in sorted(p for p in data.iterdir() if p.is_dir()):
            (dst / case.name).mkdir(parents=True)
            for f in case.glob("*.nii.gz"):
                if not f.name.endswith("_seg.nii.gz"):
                    shutil.copy(f, dst / case.name / f.name)
    else:
        shutil.copytree(data / "images", dst / "images")
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("workflow", ["evaluate", "inference"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluation_and_inference_on_a_damaged_file_end_with_one_line_naming_it(
    bundle, workflow, data_sets, trained, tmp_path
):
    root = trained(bundle)
    if workflow == "evaluate":
        data = tmp_path / "data"
        shutil.copytree(data_sets(bundle), data)
        config: str | list[str] = ["train.json", "evaluate.json"]
    else:
        data = _inference_input(bundle, data_sets(bundle), tmp_path / "data")
        config = "inference.json"
    victim = _victims(bundle, data)[1]
    _damage(victim, "truncated")
    over = {"dataset_dir": str(data), "bundle_root": str(root), "output_dir": str(tmp_path / "out"), **SMALL[bundle]}
    proc = run_bundle(bundle, config, over, check=False, timeout=300)
    _assert_clean_failure(proc, DAMAGES["truncated"], [victim])


@pytest.mark.slow
def test_evaluation_with_dataloader_workers_ends_with_the_error_of_the_worker(data_sets, trained, tmp_path):
    """A DatasetError raised in a DataLoader worker process reaches the main process only as text."""
    data = tmp_path / "data"
    shutil.copytree(data_sets("glioma_seg_idh"), data)
    victim = _victims("glioma_seg_idh", data)[2]
    _damage(victim, "empty")
    over = {
        "dataset_dir": str(data),
        "bundle_root": str(trained("glioma_seg_idh")),
        "output_dir": str(tmp_path / "o"),
        "num_workers": 2,
        **SMALL["glioma_seg_idh"],
    }
    proc = run_bundle("glioma_seg_idh", ["train.json", "evaluate.json"], over, check=False, timeout=300)
    _assert_clean_failure(proc, DAMAGES["empty"], [victim])


# ----------------------------------------------------------------------------------------- label files and cases


def _rewrite_ids(labels: Path, rename: Callable[[str], str], rows: int | None = None) -> list[str]:
    """Rename the first column's ids of ``labels`` (all rows, or the first ``rows``); return the new ids."""
    table = list(csv.reader(labels.open()))
    for i, row in enumerate(table[1:]):
        if rows is None or i < rows:
            row[0] = rename(row[0])
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(table)
    return [row[0] for row in table[1:]]


@pytest.mark.parametrize(
    "rename", [lambda s: s.replace("_", "-"), str.upper], ids=["dash_for_underscore", "upper_case"]
)
def test_glioma_labels_matching_no_case_stop_the_run_showing_ids_of_both_sides(rename, data_sets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_sets("glioma_seg_idh"), data)
    rows = _rewrite_ids(data / "labels.csv", rename)
    over = {"dataset_dir": str(data), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL["glioma_seg_idh"]}
    proc = run_bundle("glioma_seg_idh", "train.json", over, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = _last_line(proc)
    assert last.startswith(f"DatasetError: file {data / 'labels.csv'}: none of its 6 row(s) matches any of the 6"), last
    assert f"'{rows[0]}'" in last and "'synth_000'" in last, last  # ids of both sides
    assert f"'{rows[0]}' vs 'synth_000'" in last, last  # the near miss is pointed out


@pytest.mark.slow
def test_glioma_labels_partly_unmatched_are_counted_and_reported(data_sets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_sets("glioma_seg_idh"), data)
    _rewrite_ids(data / "labels.csv", lambda s: s.replace("_", "-"), rows=2)
    over = {"dataset_dir": str(data), "bundle_root": str(tmp_path / "b"), "epochs": 1, **SMALL["glioma_seg_idh"]}
    proc = run_bundle("glioma_seg_idh", "train.json", over, timeout=300)
    log = proc.stdout + proc.stderr
    assert (
        f"file {data / 'labels.csv'}: 2 of 6 row(s) match no case of the data set and are not used: "
        "'synth-000', 'synth-001'." in log
    ), log[-3000:]
    assert "'synth-000' vs 'synth_000', 'synth-001' vs 'synth_001'" in log
    assert (
        f"2 of 6 case(s) have no row in file {data / 'labels.csv'}; their 'idh' is unknown: "
        "'synth_000', 'synth_001'." in log
    )


def test_check_label_join_counts_and_limits_examples(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        unmatched, unlabelled = check_label_join("l.csv", ["a", "b", "x1", "x2", "x3"], ["a", "b", "c"], examples=2)
    assert unmatched == ["x1", "x2", "x3"] and unlabelled == ["c"]
    assert "3 of 5 row(s) match no case of the data set and are not used: 'x1', 'x2', ... (3 in all)." in caplog.text
    assert "1 of 3 case(s) have no row in file l.csv; their label is unknown: 'c'." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert check_label_join("l.csv", ["a"], ["a"]) == ([], [])
        assert check_label_join("l.csv", [], ["a"]) == ([], ["a"])  # an empty file: nothing to join, no warning
    assert not caplog.text
    with pytest.raises(DatasetError, match=r"file l.csv: none of its 1 row\(s\) matches any of the 2 image\(s\)"):
        check_label_join("l.csv", ["Q"], ["a", "b"], unit="image")
    with pytest.raises(ValueError, match="examples"):
        check_label_join("l.csv", ["a"], ["a"], examples=0)


def test_attach_case_labels_reports_cases_without_a_row(tmp_path, caplog):
    path = tmp_path / "labels.csv"
    path.write_text("patient,idh_status\na,mutant\nz,wildtype\n")
    datalist = [{"case": "a"}, {"case": "b"}]
    with caplog.at_level(logging.WARNING):
        out = attach_case_labels(datalist, path, "idh_status", {"mutant": 1, "wildtype": 0}, key="idh")
    assert [r["idh"] for r in out] == [1, -1]
    assert "1 of 2 row(s) match no case" in caplog.text and "'z'" in caplog.text
    assert "1 of 2 case(s) have no row" in caplog.text and "'b'" in caplog.text


def test_fundus_images_without_a_label_row_are_counted(data_sets, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(data_sets("fundus_glaucoma"), data)
    table = list(csv.reader((data / "labels.csv").open()))
    with (data / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(table[:-2])
    with caplog.at_level(logging.WARNING):
        records = build_fundus_datalist(data, label_column="glaucoma")
    assert len(records) == 12
    assert f"2 of 12 image(s) have no row in file {data / 'labels.csv'}; their 'glaucoma' is unknown" in caplog.text


def test_cmr_images_not_in_the_factor_file_are_counted(data_sets, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(data_sets("cmr_fundus"), data)
    extra = data / "images" / "stray_left.png"
    shutil.copy(next((data / "images").iterdir()), extra)
    factors = [
        {
            "name": "sbp",
            "kind": "regression",
            "unit": "mmHg",
            "loss": "l1",
            "center": 125,
            "scale": 15,
            "range": [60, 260],
            "column": "sbp",
        }
    ]
    with caplog.at_level(logging.WARNING):
        records = read_factor_datalist(data, factors, on_invalid="exclude")
    assert "stray_left" not in {r["image_id"] for r in records}
    assert f"1 of {len(records) + 1} image(s) have no row in file {data / 'factors.csv'}" in caplog.text
    assert "'stray_left.png'" in caplog.text


# ---------------------------------------------------------------------------------------- the shared check code


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_read_error_says_what_is_wrong_with_a_volume_or_photo(damage, data_sets, tmp_path):
    nifti = damage != "undecodable"
    src = _victims(
        "glioma_seg_idh" if nifti else "fundus_glaucoma", data_sets("glioma_seg_idh" if nifti else "fundus_glaucoma")
    )[0]
    path = tmp_path / src.name
    shutil.copy(src, path)
    _damage(path, damage)
    load = LoadCaseImaged("image", reader=None if nifti else "PILReader", image_only=True)
    with pytest.raises(DatasetError) as info:
        load({"image": str(path), "case": "c7"})
    message = str(info.value)
    assert message.startswith(f"case 'c7', file {path}: {DAMAGES[damage]}") and TODO in message, message
    assert isinstance(info.value.__cause__, Exception) and not isinstance(info.value.__cause__, DatasetError)
    # the same words from the function every reader uses
    assert str(read_error("c7", path, info.value.__cause__)) == message


def test_read_error_of_a_missing_file_says_to_check_the_path(tmp_path):
    message = str(read_error(None, tmp_path / "gone.nii.gz", FileNotFoundError("gone")))
    assert message.startswith(f"file {tmp_path / 'gone.nii.gz'}: does not exist") and "check the path" in message


def test_load_case_imaged_loads_intact_files_as_load_imaged(data_sets):
    path = _victims("glioma_seg_idh", data_sets("glioma_seg_idh"))[0]
    out = LoadCaseImaged(["image"], image_only=False, ensure_channel_first=True)({"image": str(path), "case": "c"})
    assert out["image"].shape[0] == 1 and out["image_meta_dict"]["filename_or_obj"] == str(path)
    assert torch.is_tensor(out["image"])


def test_dataset_error_message_follows_wrapped_and_worker_errors():
    try:
        try:
            raise DatasetError("case 'a', file x.nii.gz: is truncated")
        except DatasetError as err:
            raise RuntimeError("Failed to evaluate ConfigExpression") from err
    except RuntimeError as wrapped:
        assert dataset_error_message(wrapped) == "case 'a', file x.nii.gz: is truncated"
    worker = RuntimeError(
        "Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        "last):\n  File ...\ncommon.errors.DatasetError: case 'b', file y.png: is empty (0 bytes)\n"
    )
    assert dataset_error_message(worker) == "case 'b', file y.png: is empty (0 bytes)"
    assert dataset_error_message(ValueError("other")) is None


_HOOK_SCRIPT = """
import threading, time, sys
from common.errors import DatasetError, install_error_hook
install_error_hook()
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a worker still alive at the error
def load():
    raise DatasetError("case 'a', file /d/a.nii.gz: is truncated\\n(second line)")
try:
    load()
except DatasetError as err:
    raise RuntimeError("Failed to instantiate component 'CacheDataset'") from err
"""


@pytest.mark.parametrize("debug", ["", "1"])
def test_error_hook_exits_1_with_the_error_last(debug):
    env = dict(os.environ, MTL_DEBUG=debug)
    proc = subprocess.run(
        [sys.executable, "-c", _HOOK_SCRIPT], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert _last_line(proc) == "DatasetError: case 'a', file /d/a.nii.gz: is truncated (second line)"
    assert ("Traceback" in proc.stderr) == bool(debug), proc.stderr
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from common.errors import install_error_hook\ninstall_error_hook()\nraise KeyError('k')",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 1 and _last_line(other) == "KeyError: 'k'"  # other errors: Python's traceback


def test_error_hook_cuts_logged_data_errors_to_one_line(monkeypatch, caplog):
    """MONAI's StatsHandler logs an engine's exception with its traceback; the hook keeps one line of it."""
    from common.errors import install_error_hook

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(logging, "_logRecordFactory", logging.LogRecord)
    install_error_hook(debug=False)
    with caplog.at_level(logging.ERROR):
        try:
            try:
                raise DatasetError("case 'a', file a.png: is empty (0 bytes)")
            except DatasetError as err:
                raise RuntimeError("applying transform <LoadCaseImaged>") from err
        except RuntimeError:
            logging.getLogger("StatsHandler").exception("Exception: applying transform <LoadCaseImaged>")
        try:
            raise KeyError("k")
        except KeyError:
            logging.getLogger("other").exception("Exception: not a data error")
    data_record, other_record = caplog.records
    assert data_record.exc_info is None
    assert data_record.getMessage() == (
        "Exception: applying transform <LoadCaseImaged> [DatasetError: case 'a', file a.png: is empty (0 bytes)]"
    )
    assert other_record.exc_info is not None  # any other error keeps its traceback
    assert caplog.text.count("Traceback") == 1 and "KeyError" in caplog.text


def test_error_hook_not_installed_twice_nor_in_an_interactive_session(monkeypatch):
    from common.errors import install_error_hook

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    install_error_hook()
    hook = sys.excepthook
    assert getattr(hook, "_mtl_error_hook", False)
    install_error_hook()
    assert sys.excepthook is hook
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    install_error_hook()
    assert sys.excepthook is sys.__excepthook__
