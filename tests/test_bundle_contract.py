"""The contract every bundle of ``bundles/`` keeps, tested the same way for each (its differences are the small
tables of ``tests/bundle_specs.py``): complete MONAI workflow properties, valid metadata describing every network
output, the same network in every workflow, a killed training resumed from its last checkpoint, two-process
(gloo) training under torchrun, a TorchScript export, and one clear error for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from tests.bundle_cli import (
    REPO,
    SCHEMA,
    bundle_command,
    bundle_configs,
    bundle_env,
    bundle_names,
    cli_args,
    config_arg,
    log_of,
    run_bundle,
)
from tests.bundle_specs import QUICK, WORKFLOW_CONFIGS, spec_of

BUNDLES = bundle_names()


def _cases(attribute: str) -> list:
    """(bundle, key) cases of a per-bundle table: one per item of ``spec.<attribute>``; a bundle without a spec
    gets one case that fails naming it."""
    cases = []
    for bundle in BUNDLES:
        try:
            items = getattr(spec_of(bundle), attribute)
        except KeyError:
            items = [None]
        keys = list(items) if isinstance(items, dict) else list(range(len(items)))
        cases += [pytest.param(bundle, key, id=f"{bundle}-{key}") for key in keys]
    return cases


def _epoch(state: dict) -> int:
    """Completed epochs recorded in a checkpoint's ignite trainer state."""
    return state["trainer"]["iteration"] // state["trainer"]["epoch_length"]


def _saved_epoch(path: Path) -> int:
    """The epoch in a checkpoint's name (``..._epoch=<N>.pt``)."""
    return int(path.stem.split("=")[-1])


def _parser(bundle: str, workflow: str) -> ConfigParser:
    """The merged configs of one of ``bundle``'s workflows."""
    parser = ConfigParser()
    parser.read_config([str(bundle_configs(bundle) / c) for c in WORKFLOW_CONFIGS[workflow]])
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_workflow_properties_complete(bundle, bundle_data, tmp_path):
    """Every required MONAI bundle property of train.json and inference.json is present (model-zoo's check).

    ``ckpt_dir`` points to a scratch folder: initialising train.json takes the training lock and writes side files
    (e.g. a fitted score) into it, which must not touch the checkout's own ``models/`` folder."""
    spec, cfg_dir = spec_of(bundle), bundle_configs(bundle)
    for workflow, kind in (("train", "train"), ("inference", "infer")):
        files = [str(cfg_dir / c) for c in WORKFLOW_CONFIGS[workflow]]
        wf = ConfigWorkflow(
            config_file=files if len(files) > 1 else files[0],
            meta_file=str(cfg_dir / "metadata.json"),
            workflow_type=kind,
            logging_file=str(cfg_dir / "logging.conf"),
            dataset_dir=str(bundle_data(bundle)),
            ckpt_dir=str(tmp_path / "models"),
            **spec.workflow_overrides,
        )
        wf.initialize()
        assert not wf.check_properties(), f"{workflow}: missing properties {wf.check_properties()}"
        wf.finalize()  # releases the training lock


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_valid_and_describes_every_output(bundle):
    spec, cfg_dir = spec_of(bundle), bundle_configs(bundle)
    meta = json.loads((cfg_dir / "metadata.json").read_text())
    if SCHEMA.exists():
        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"]
    assert (cfg_dir.parent / "LICENSE").is_file() and (cfg_dir.parent / "docs" / "README.md").is_file()
    parser = _parser(bundle, "inference")
    fmt = meta["network_data_format"]
    inp = fmt["inputs"]["image"]
    channels = spec.channels(parser)
    assert inp["num_channels"] == len(channels)
    assert [inp["channel_def"][str(i)] for i in range(inp["num_channels"])] == channels
    assert inp["spatial_shape"] == spec.spatial_shape(parser)
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.randn(2, inp["num_channels"], *inp["spatial_shape"]))
    assert set(out) == set(fmt["outputs"]), "every network output must be described in network_data_format"
    for name, desc in fmt["outputs"].items():
        assert out[name].shape[1] == desc["num_channels"], name
        if len(desc["spatial_shape"]) > 1:
            assert list(out[name].shape[2:]) == desc["spatial_shape"], name


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_evaluate_inference_networks_agree(bundle):
    """The three workflows build the same architectures (same state-dict keys and shapes)."""
    spec = spec_of(bundle)
    shapes = {}
    for workflow in WORKFLOW_CONFIGS:
        parser = _parser(bundle, workflow)
        shapes[workflow] = {
            key: {k: tuple(v.shape) for k, v in parser.get_parsed_content(key).state_dict().items()}
            for key in spec.networks
        }
    assert shapes["train"] == shapes["evaluate"] == shapes["inference"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_killed_training_resumes_from_last_checkpoint(bundle, bundle_data, tmp_path):
    spec = spec_of(bundle)
    epochs = spec.resume_epochs
    overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(tmp_path), "epochs": epochs,
                 "ema_decay": 0.5, **spec.small, **spec.resume}
    cmd = bundle_command(bundle, WORKFLOW_CONFIGS["train"], overrides)
    proc = subprocess.Popen(cmd, cwd=REPO, env=bundle_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    models = tmp_path / "models"
    try:
        deadline = time.time() + 300
        while not list(models.glob("resume_*.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = sorted(models.glob("resume_*.pt"), key=_saved_epoch)
    assert saved, "no epoch checkpoint was written before the kill"
    epoch_saved = _saved_epoch(saved[-1])
    assert epoch_saved < epochs, "the run must be interrupted before it finished"
    log = log_of(run_bundle(bundle, WORKFLOW_CONFIGS["train"], overrides))
    assert f"resuming training from {saved[-1]}" in log
    assert "Engine run resuming from iteration" in log
    assert f"epoch {epoch_saved}: training tasks" not in log  # finished epochs are not trained again
    assert f"epoch {epoch_saved + 1}: training tasks" in log
    for line in spec.resume_log:
        assert line in log
    state = torch.load(models / f"resume_checkpoint_epoch={epochs}.pt", map_location="cpu", weights_only=False)
    assert _epoch(state) == epochs
    assert int(state["ema"]["n_averaged"]) == state["trainer"]["iteration"]  # the EMA resumed, not restarted
    if spec.resume_state is not None:
        spec.resume_state(state, epochs)


@pytest.mark.slow
@pytest.mark.parametrize("bundle, variant", _cases("torchrun"))
def test_torchrun_two_processes(bundle, variant, bundle_data, tmp_path):
    spec = spec_of(bundle)
    overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(tmp_path), "epochs": 2, **spec.small,
                 **spec.torchrun[variant]}
    proc = run_bundle(bundle, [*WORKFLOW_CONFIGS["train"], "multi_gpu_train.json"], overrides, torchrun=2)
    log = log_of(proc)
    assert "rank 0: epoch 2: training tasks" in log and "rank 1: epoch 2: training tasks" in log
    models = tmp_path / "models"
    for name in spec.model_files:
        assert (models / name).is_file(), name
    # one resume checkpoint of each kind, written once (by rank 0 only)
    assert sorted(p.name for p in models.glob("*resume_*.pt")) == [f"{p}=2.pt" for p in spec.resume_prefixes]
    assert log.count("Saved checkpoint at epoch: 2") == spec.checkpoints_logged


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_torchscript_export(bundle, trained_bundle, tmp_path):
    spec, cfg_dir = spec_of(bundle), bundle_configs(bundle)
    trained = trained_bundle(bundle)
    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(trained / "models" / "model.pt"), "--key_in_ckpt", "model",
           "--config_file", config_arg(bundle, WORKFLOW_CONFIGS["inference"]),
           "--meta_file", str(cfg_dir / "metadata.json"), "--bundle_root", str(trained), *cli_args(spec.small)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.jit.load(str(ts))
    out = model(torch.randn(*spec.example_input))
    assert list(out) == list(spec.example_outputs)
    for name, shape in spec.example_outputs.items():
        assert out[name].shape == shape, name


@pytest.mark.slow
@pytest.mark.parametrize("bundle, damage", _cases("bad_inputs"))
def test_bad_input_gives_one_clear_error(bundle, damage, bundle_data, tmp_path):
    spec = spec_of(bundle)
    bad = tmp_path / "bad"
    expected = spec.bad_inputs[damage](bundle_data(bundle), bad)
    overrides = {"dataset_dir": str(bad), "bundle_root": str(tmp_path / "b"), **spec.small, **spec.bad_input}
    proc = run_bundle(bundle, WORKFLOW_CONFIGS["train"], overrides, check=False)
    assert proc.returncode != 0
    assert "DatasetError" in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_speed_switches_train_and_evaluate(bundle, bundle_data, tmp_path):
    """Training with bf16 autocast, channels-last and EMA weights, then evaluation in bf16: the run finishes, the
    saved model is float32 and the metrics are finite."""
    switches = {"precision": "bf16", "memory_format": "channels_last", "ema_decay": 0.9}
    settings = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(tmp_path), **QUICK[bundle], **switches}
    run_bundle(bundle, WORKFLOW_CONFIGS["train"], {**settings, "epochs": 2, "val_interval": 1, "progress_bar": False})
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    weights = model.get("model", model)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    resume = torch.load(next((tmp_path / "models").glob("resume_checkpoint_epoch=*.pt")), map_location="cpu",
                        weights_only=True)
    assert int(resume["ema"]["n_averaged"]) == resume["trainer"]["iteration"] > 0
    run_bundle(bundle, WORKFLOW_CONFIGS["evaluate"], {**settings, "output_dir": str(tmp_path / "eval")})
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    numbers = [v for v in metrics.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numbers and all(v == v for v in numbers), metrics  # no NaN


@pytest.mark.parametrize("bundle", BUNDLES)
def test_design_command_trains_on_the_generated_default_data(bundle, tmp_path):
    """``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` in a fresh checkout (no data
    prepared by hand): the default ``dataset_dir``, the embedded demo set, is generated on first use and trained on;
    tiny settings and one epoch keep it short."""
    checkout = tmp_path / "checkout"
    shutil.copytree(bundle_configs(bundle), checkout / "bundles" / bundle / "configs")
    demo = ConfigParser.load_config_file(str(bundle_configs(bundle) / "train.json"))["demo_dataset_dir"]
    overrides = {**spec_of(bundle).small, **spec_of(bundle).train, "epochs": 1, "progress_bar": False}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/train.json",
           *cli_args(overrides)]
    proc = subprocess.run(cmd, cwd=checkout, env=bundle_env(), capture_output=True, text=True, timeout=900)
    log = log_of(proc)
    assert proc.returncode == 0, log[-5000:]
    assert f"dataset_dir '{demo}' (the bundle's default, the embedded demo data set) is absent: generating it" in log
    assert any((checkout / demo).iterdir())
    for name in spec_of(bundle).model_files:
        assert (checkout / "bundles" / bundle / "models" / name).is_file(), name
