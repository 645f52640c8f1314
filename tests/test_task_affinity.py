"""TaskAffinity on a tiny two-task problem: tasks that share a target help each other, opposed tasks hurt."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from common.engines import MultiTaskPrepareBatch, MultiTaskTrainer
from common.handlers import TaskAffinity
from common.losses import MultiTaskLoss
from common.networks import MultiTaskNet
from common.weighting import get_weighting


def _run(sign: float, tmp_path, epochs: int = 2):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]])
    loader = [{"image": x, "a": y, "b": sign * y}] * 4
    net = MultiTaskNet(nn.Linear(4, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    with torch.no_grad():  # the same head for both tasks, so only the shared layer decides the sign
        net.heads["b"].weight.copy_(net.heads["a"].weight)
        net.heads["b"].bias.copy_(net.heads["a"].bias)
    loss = MultiTaskLoss({"a": {"loss": nn.MSELoss(), "target": "a"}, "b": {"loss": nn.MSELoss(), "target": "b"}})
    w = get_weighting("ew", ["a", "b"])
    trainer = MultiTaskTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=loss, weighting=w,
        prepare_batch=MultiTaskPrepareBatch("image", ["a", "b"]),
    )
    handler = TaskAffinity(interval=2, save_dir=str(tmp_path))
    handler.attach(trainer)
    trainer.run()
    return json.loads((tmp_path / "task_affinity.json").read_text())


def test_identical_tasks_have_positive_affinity_and_aligned_gradients(tmp_path):
    m = _run(1.0, tmp_path)
    assert m["tasks"] == ["a", "b"] and m["measurements"] == 4  # 8 iterations, every 2nd
    assert m["affinity"][0][1] > 0 and m["affinity"][1][0] > 0 and m["affinity"][0][0] > 0
    assert m["gradient_cosine"][0][1] == pytest.approx(1.0, abs=1e-4)
    assert m["lookahead_lr"] == pytest.approx(0.01)


def test_opposed_tasks_have_negative_affinity_and_opposed_gradients(tmp_path):
    m = _run(-1.0, tmp_path)
    assert m["affinity"][0][1] < 0 and m["affinity"][1][0] < 0
    assert m["affinity"][0][0] > 0 and m["affinity"][1][1] > 0  # a step on a task still helps itself
    assert m["gradient_cosine"][0][1] < -0.5


def test_measurement_leaves_parameters_and_mode_unchanged(tmp_path):
    net = MultiTaskNet(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5)), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    loss = MultiTaskLoss({"a": {"loss": nn.MSELoss(), "target": "a"}, "b": {"loss": nn.MSELoss(), "target": "b"}})
    x = torch.randn(16, 4)
    trainer = MultiTaskTrainer(
        device="cpu", max_epochs=1, train_data_loader=[{"image": x, "a": x[:, :1], "b": x[:, 1:2]}], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss,
        weighting=get_weighting("ew", ["a", "b"]),
        prepare_batch=MultiTaskPrepareBatch("image", ["a", "b"]),
    )
    trainer.state.batch = {"image": x, "a": x[:, :1], "b": x[:, 1:2]}
    before = [p.detach().clone() for p in net.parameters()]
    net.train()
    handler = TaskAffinity(interval=1)
    handler.measure(trainer)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert handler.matrices()["measurements"] == 1
    with pytest.raises(ValueError, match="interval"):
        TaskAffinity(interval=0)
