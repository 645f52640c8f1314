"""Checkpoints survive interruptions: atomic writes, and resume skips a file that cannot be loaded."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from common.handlers import SIGNATURE_FILE, AtomicCheckpointSaver, find_resume_checkpoint


class Unpicklable(nn.Module):
    """A module whose state cannot be serialised: torch.save fails part-way through writing."""

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return {"w": torch.ones(1000), "bad": lambda: None}


def test_failed_save_keeps_previous_model_intact(tmp_path):
    good = nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": good}, save_final=True, final_filename="model.pt")
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    before = torch.load(tmp_path / "model.pt", weights_only=True)

    bad_engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": Unpicklable()}, save_final=True, final_filename="model.pt")
    saver.attach(bad_engine)
    with pytest.raises(Exception):
        bad_engine.run([0], max_epochs=1)
    after = torch.load(tmp_path / "model.pt", weights_only=True)
    assert after["weight"].equal(before["weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")], "no temporary file left behind"


def test_interval_checkpoints_keep_only_the_last(tmp_path):
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(tmp_path), {"model": nn.Linear(2, 2)}, file_prefix="resume", save_interval=1,
                          n_saved=1, epoch_level=True).attach(engine)
    engine.run([0], max_epochs=3)
    assert [p.name for p in tmp_path.glob("resume_*.pt")] == ["resume_model_epoch=3.pt"]  # one object: named by its key


def test_resume_skips_unloadable_newest_checkpoint(tmp_path):
    torch.save({"x": torch.ones(1)}, tmp_path / "resume_checkpoint_epoch=4.pt")
    (tmp_path / "resume_checkpoint_epoch=5.pt").write_bytes(b"\x80\x02truncated")
    (tmp_path / SIGNATURE_FILE).write_text(json.dumps({"run": 1}))
    assert find_resume_checkpoint(str(tmp_path), {"run": 1}).endswith("epoch=4.pt")
