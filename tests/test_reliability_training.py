"""Training runs and checkpoints fail or warn clearly, for every bundle (issue 18): a resumed run keeps its best
model, one training run per checkpoint folder, evaluation/inference refuse a model with other settings or none,
and unknown strategy/weighting names list the valid ones."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.data import generate_brats_like, generate_cmr_fundus_like
from common.data.synthetic_fundus import generate_fundus_like
from common.engines import strategy_phases, trained_tasks
from common.handlers import (
    LOCK_FILE,
    BestMetricState,
    RunLock,
    RunLockedError,
    check_model_settings,
    settings_path,
)
from common.weighting import get_weighting
from tests.bundle_cli import log_of, run_bundle
from tests.bundle_specs import QUICK

SMALL = QUICK  # tests/bundle_specs.py: tiny settings, one locator epoch
BUNDLES = list(SMALL)
# a network setting each bundle's model_settings records, with another value
OTHER_SETTING = {
    "brats_mtl": ("hidden_size", 64),
    "glioma_seg_idh": ("features", [4, 8, 32]),
    "fundus_glaucoma": ("features", [4, 8, 32]),
    "cmr_fundus": ("hidden_dim", 16),
}
VALID_STRATEGIES = {
    "brats_mtl": ["mtl", "pretrain_finetune", "stl"],
    "glioma_seg_idh": ["mtl", "stl_idh", "stl_seg"],
    "fundus_glaucoma": ["cool", "mtl", "stl_cls", "stl_seg"],
    "cmr_fundus": ["independent", "moe", "sepl"],
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_data(bundle: str, out: Path) -> Path:
    if bundle in ("brats_mtl", "glioma_seg_idh"):
        generate_brats_like(out, n_cases=10, shape=(32, 32, 12), seed=5)
        return out
    if bundle == "fundus_glaucoma":
        return Path(generate_fundus_like(out, n_images=12, size=(160, 176), seed=3))
    return Path(generate_cmr_fundus_like(out, n_patients=12, size=48, seed=3))


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, Path]:
    return {b: _make_data(b, tmp_path_factory.mktemp(f"{b}_data")) for b in BUNDLES}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- library units ---------------------------------------------------------------------------------------------


def test_unknown_strategy_and_weighting_list_the_valid_names():
    with pytest.raises(ValueError, match=r"strategy must be one of \['mtl', 'stl'\], got 'mlt'"):
        strategy_phases({"mtl": [{"epochs": 1, "tasks": ["a"]}], "stl": [{"epochs": 1, "tasks": ["a"]}]}, "mlt")
    assert strategy_phases({"mtl": [{"epochs": 2, "tasks": ["a", "b"]}]}, "mtl") == [{"epochs": 2, "tasks": ["a", "b"]}]
    assert trained_tasks([{"epochs": 1, "tasks": ["mim"]}, {"epochs": 1, "tasks": ["cls", "mim"]}]) == ["mim", "cls"]
    with pytest.raises(ValueError, match=r"weighting name must be one of \[.*'uw'.*\], got 'uww'"):
        get_weighting("uww", ["a", "b"])


def test_best_metric_state_round_trip_with_early_stopping():
    from ignite.engine import Engine
    from ignite.handlers import EarlyStopping

    trainer, validator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    validator.state.best_metric, validator.state.best_metric_epoch, validator.state.key_metric_name = 0.7, 4, "dice"
    stop = EarlyStopping(patience=5, score_function=lambda e: 0.0, trainer=trainer)
    stop.counter, stop.best_score = 2, 0.7
    saved = json.loads(json.dumps(BestMetricState(validator, stop).state_dict()))  # plain values only
    assert saved == {"best_metric": 0.7, "best_metric_epoch": 4, "key_metric_name": "dice",
                     "early_stop": {"counter": 2, "best_score": 0.7}}
    fresh_validator = Engine(lambda e, b: None)
    fresh_validator.state.best_metric, fresh_validator.state.best_metric_epoch = -1, -1
    fresh_stop = EarlyStopping(patience=5, score_function=lambda e: 0.0, trainer=trainer)
    BestMetricState(fresh_validator, fresh_stop).load_state_dict(saved)
    assert (fresh_validator.state.best_metric, fresh_validator.state.best_metric_epoch) == (0.7, 4)
    assert (fresh_stop.counter, fresh_stop.best_score) == (2, 0.7)


def test_run_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_file = tmp_path / LOCK_FILE
        lock_file.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        with pytest.raises(RunLockedError, match=rf"{re.escape(str(tmp_path))} is in use .*PID {sleeper.pid}"):
            RunLock(tmp_path).acquire()
        assert json.loads(lock_file.read_text())["pid"] == sleeper.pid, "a live run's lock is left alone"
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    lock_file.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "x"}))
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path).acquire()
    assert f"PID {dead}" in caplog.text and "no longer running" in caplog.text
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert RunLock(tmp_path).acquire().held is False, "the holding process may take it again (nested stages)"
    lock.release()
    assert not lock_file.exists()
    # another host's lock cannot be checked: refused, naming the host
    lock_file.write_text(json.dumps({"pid": dead, "host": "elsewhere.example", "started": "x"}))
    with pytest.raises(RunLockedError, match="host elsewhere.example"):
        RunLock(tmp_path).acquire()


def test_check_model_settings_names_the_differing_setting_and_warns_for_untrained_tasks(tmp_path, caplog):
    model = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError, match=r"no trained model at .*model\.pt: train first with python -m "
                                                r"monai\.bundle run --config_file cfg/train\.json"):
        check_model_settings(str(model), {"features": [4, 8]}, ["seg"], train_config="cfg/train.json")
    torch.save({}, model)
    Path(settings_path(str(model))).write_text(
        json.dumps({"features": [4, 8], "slices": 3, "strategy": "stl_seg", "trained_tasks": ["seg"]})
    )
    with pytest.raises(ValueError, match=r"features: model \[4, 8\], this run \[4, 16\]"):
        check_model_settings(str(model), {"features": [4, 16], "slices": 3}, ["seg"])
    with caplog.at_level(logging.WARNING):
        check_model_settings(str(model), {"features": [4, 8], "new_setting": 1}, ["seg", "idh"])
    assert "never trained task(s) ['idh']" in caplog.text and "'stl_seg'" in caplog.text


# --- through the real CLI, every bundle ---------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", BUNDLES)
def test_unknown_strategy_lists_valid_ones_and_releases_the_lock(bundle, data_dirs, tmp_path):
    proc = run_bundle(
        bundle, "train.json",
        {"dataset_dir": str(data_dirs[bundle]), "bundle_root": str(tmp_path), "strategy": "mlt", **SMALL[bundle]},
        check=False,
    )
    assert proc.returncode != 0
    assert f"strategy must be one of {VALID_STRATEGIES[bundle]}, got 'mlt'" in proc.stderr
    assert "KeyError" not in proc.stderr
    assert not (tmp_path / "models" / LOCK_FILE).exists(), "the lock is released when the run fails"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_second_training_into_the_same_folder_is_refused(bundle, data_dirs, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (models / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                     "started": "2026-01-01 00:00:00", "command": "first run"}))
        proc = run_bundle(
            bundle, "train.json",
            {"dataset_dir": str(data_dirs[bundle]), "bundle_root": str(tmp_path), "epochs": 1, **SMALL[bundle]},
            check=False,
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode != 0
    assert "RunLockedError" in proc.stderr and f"{models} is in use" in proc.stderr
    assert f"PID {sleeper.pid}" in proc.stderr
    assert not list(models.glob("*.pt")) and not (models / "resume_signature.json").exists(), "nothing written"
    assert json.loads((models / LOCK_FILE).read_text())["pid"] == sleeper.pid


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_and_inference_without_a_model_say_train_first(bundle, data_dirs, tmp_path):
    common = {"dataset_dir": str(data_dirs[bundle]), "bundle_root": str(tmp_path), "output_dir": str(tmp_path / "out"),
              **SMALL[bundle]}
    for configs in (["train.json", "evaluate.json"], "inference.json"):
        proc = run_bundle(bundle, configs, common, check=False)
        assert proc.returncode != 0, configs
        assert re.search(r"no trained model at \S*(model\.pt|glaucoma_score\.json): train first with python -m "
                         r"monai\.bundle run --config_file \S*train\.json", proc.stderr), (configs, proc.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_resumed_run_keeps_best_model_and_checkpoint_settings_are_enforced(bundle, data_dirs, tmp_path):
    """A run stopped after its best epoch (epoch 1 of 3) and restarted with the same command continues the best
    score: later, worse epochs leave models/model.pt alone; evaluation and inference refuse other settings."""
    models = tmp_path / "models"
    models.mkdir()
    stale = _dead_pid()
    (models / LOCK_FILE).write_text(json.dumps({"pid": stale, "host": socket.gethostname(), "started": "x"}))
    base = {"dataset_dir": str(data_dirs[bundle]), "bundle_root": str(tmp_path), "epochs": 3, "val_interval": 1,
            "progress_bar": False, **SMALL[bundle]}
    # first part: stops after epoch 1 (as if killed), with the signature of a 3-epoch run
    log1 = log_of(run_bundle(bundle, "train.json", {**base, "train#trainer#max_epochs": 1}))
    assert f"taking over the lock {models / LOCK_FILE}" in log1 and f"PID {stale}" in log1
    assert not (models / LOCK_FILE).exists(), "released at the end of the run"
    best = re.findall(r"Got new best metric of (\w+): (\S+)", log1)
    assert len(best) == 1
    ckpt = models / "resume_checkpoint_epoch=1.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["best_metric"]["best_metric_epoch"] == 1
    assert state["best_metric"]["key_metric_name"] == best[0][0]
    assert state["best_metric"]["best_metric"] == pytest.approx(float(best[0][1]))
    recorded = json.loads((models / "model_settings.json").read_text())
    assert recorded["trained_tasks"] and recorded["strategy"]
    # stand-in for "epoch 1 was the best of the run": no later epoch can beat the recorded score
    state["best_metric"]["best_metric"] = float("inf")
    torch.save(state, ckpt)
    model, before, mtime = models / "model.pt", _sha(models / "model.pt"), (models / "model.pt").stat().st_mtime_ns

    log2 = log_of(run_bundle(bundle, "train.json", base))
    assert f"resuming training from {ckpt}" in log2
    assert f"resumed best metric of {best[0][0]}: inf at epoch 1" in log2
    assert "Got new best metric" not in log2
    assert (models / "resume_checkpoint_epoch=3.pt").is_file()
    assert _sha(model) == before and model.stat().st_mtime_ns == mtime, "worse epochs replaced the best model"

    # evaluation and inference: a setting that differs from the model's is refused, naming it and both values
    key, value = OTHER_SETTING[bundle]
    trained_value = json.loads((models / "model_settings.json").read_text())[key]
    other = {**base, key: value, "output_dir": str(tmp_path / "out")}
    for configs in (["train.json", "evaluate.json"], "inference.json"):
        proc = run_bundle(bundle, configs, other, check=False)
        assert proc.returncode != 0
        assert f"{key}: model {trained_value!r}, this run {value!r}" in proc.stderr, proc.stderr[-3000:]
        assert "size mismatch" not in proc.stderr


@pytest.mark.slow
def test_evaluating_a_head_that_was_never_trained_warns(data_dirs, tmp_path):
    bundle = "glioma_seg_idh"
    base = {"dataset_dir": str(data_dirs[bundle]), "bundle_root": str(tmp_path), "epochs": 1, "val_interval": 1,
            "progress_bar": False, **SMALL[bundle]}
    run_bundle(bundle, "train.json", {**base, "strategy": "stl_seg"})
    proc = run_bundle(bundle, ["train.json", "evaluate.json"], {**base, "output_dir": str(tmp_path / "out"),
                                                                "n_bootstrap": 0})
    assert "never trained task(s) ['idh']" in log_of(proc) and "'stl_seg'" in log_of(proc)
