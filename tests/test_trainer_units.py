"""MultiTaskTrainer on a tiny in-memory problem: phases, inactive-task kwargs, missing labels, weighting."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from torch import nn

from common.engines import MultiTaskPrepareBatch, MultiTaskTrainer, active_tasks_for_epoch
from common.losses import MultiTaskLoss
from common.networks import MultiTaskNet
from common.weighting import get_weighting


def test_active_tasks_for_epoch():
    phases = [{"epochs": 2, "tasks": ["mim"]}, {"epochs": 3, "tasks": ["cls"]}]
    assert [active_tasks_for_epoch(phases, e) for e in (1, 2, 3, 5, 9)] == [["mim"], ["mim"], ["cls"], ["cls"], ["cls"]]
    with pytest.raises(ValueError, match="phases"):
        active_tasks_for_epoch([], 1)


class RecordingNet(MultiTaskNet):
    def __init__(self):
        super().__init__(nn.Linear(3, 4), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
        self.calls = []

    def forward(self, x, flag=None):  # type: ignore[override]
        self.calls.append(flag)
        return super().forward(x)


def _loader(n=8, unknown_a=False):
    torch.manual_seed(0)
    x = torch.randn(n, 3)
    a = torch.full((n,), -1) if unknown_a else (x[:, 0] > 0).long()
    return [{"image": x, "a": a, "b": x[:, 1:2], "flag": torch.ones(n)}]


def _trainer(net, phases=None, weighting="ew", inactive=None, loader=None, epochs=3, weighting_args=None):
    loss = MultiTaskLoss({
        "a": {"loss": nn.BCEWithLogitsLoss(), "target": "a", "missing_value": -1},
        "b": {"loss": nn.MSELoss(), "target": "b"},
    })
    w = get_weighting(weighting, ["a", "b"], **(weighting_args or {}))
    opt = torch.optim.SGD(list(net.parameters()) + list(w.parameters()), lr=0.1)
    return MultiTaskTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=loader or _loader(), network=net, optimizer=opt,
        loss_function=loss, weighting=w, phases=phases, inactive_task_kwargs=inactive,
        prepare_batch=MultiTaskPrepareBatch("image", ["a", "b"], {"flag": "flag"}),
    )


def test_phases_and_inactive_kwargs():
    net = RecordingNet()
    seen = []
    phases = [{"epochs": 1, "tasks": ["b"]}, {"epochs": 2, "tasks": ["a", "b"]}]
    tr = _trainer(net, phases=phases, inactive={"a": {"flag": None}})
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(sorted(e.state.output["task_losses"])))
    tr.run()
    assert seen == [["b"], ["a", "b"], ["a", "b"]]
    assert net.calls[0] is None and net.calls[1] is not None  # flag withheld while task a is inactive


def test_head_of_inactive_task_does_not_change():
    net = RecordingNet()
    before = net.heads["a"].weight.detach().clone()
    _trainer(net, phases=[{"epochs": 3, "tasks": ["b"]}]).run()
    assert torch.equal(before, net.heads["a"].weight)


def test_missing_labels_still_train_other_tasks():
    net = RecordingNet()
    before_b = net.heads["b"].weight.detach().clone()
    tr = _trainer(net, loader=_loader(unknown_a=True))
    tr.run()
    assert set(tr.state.output["task_losses"]) == {"b"}
    assert not torch.equal(before_b, net.heads["b"].weight)


@pytest.mark.parametrize(
    "name, args",
    [("ew", {}), ("uw", {}), ("pcgrad", {}), ("cagrad", {}), ("famo", {}), ("upgrad", {}),
     ("mgda", {"use_autogram": True})],  # autogram: the trainer attaches the network to the weighting
)
def test_weightings_reduce_training_loss(name, args):
    solver = {"cagrad": "cvxpy", "upgrad": "quadprog"}.get(name)
    if solver:
        pytest.importorskip(solver)
    tr2 = _trainer(RecordingNet(), weighting=name, epochs=30, weighting_args=args)
    hist = []
    tr2.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: hist.append(sum(e.state.output["task_losses"].values()))
    )
    tr2.run()
    assert hist[-1] < hist[0]
    assert set(tr2.state.output["task_weights"]) == {"a", "b"}


def test_invalid_trainer_arguments():
    with pytest.raises(ValueError, match="phases"):
        _trainer(RecordingNet(), phases=[{"epochs": 1, "tasks": ["zzz"]}])


def test_resume_flag_from_command_line_strings(tmp_path):
    from common.handlers import ResumeCheckpoint

    assert ResumeCheckpoint(str(tmp_path), {}, resume="false").resume is False
    assert ResumeCheckpoint(str(tmp_path), {}, resume="True").resume is True
    with pytest.raises(ValueError, match="resume"):
        ResumeCheckpoint(str(tmp_path), {}, resume="maybe")


def test_find_resume_checkpoint_needs_matching_signature(tmp_path):
    import json

    from common.handlers import SIGNATURE_FILE, find_resume_checkpoint

    assert find_resume_checkpoint(str(tmp_path), {"a": 1}) is None
    for e in (1, 2, 10):
        torch.save({"epoch": torch.tensor(e)}, tmp_path / f"resume_checkpoint_epoch={e}.pt")
    (tmp_path / SIGNATURE_FILE).write_text(json.dumps({"a": 1}))
    assert find_resume_checkpoint(str(tmp_path), {"a": 1}).endswith("epoch=10.pt")  # numeric, not lexical order
    assert find_resume_checkpoint(str(tmp_path), {"a": 2}) is None
