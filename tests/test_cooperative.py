"""CooperativeTrainer (MT-CooL-style): tasks updated in turn, SAM-style perturbation applied and removed, training."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Events
from torch import nn

from common.engines import CooperativeTrainer, MultiTaskPrepareBatch
from common.handlers import ResumeCheckpoint
from common.losses import MultiTaskLoss
from common.networks import MultiTaskNet, UNetSegClassifier
from common.weighting import get_weighting

LR = 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems: intra-op threads only cost time (a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})


def _loss() -> MultiTaskLoss:
    return MultiTaskLoss({
        "a": {"loss": nn.BCEWithLogitsLoss(), "target": "a", "missing_value": -1},
        "b": {"loss": nn.MSELoss(), "target": "b"},
    })


def _batch(n: int = 8, unknown_a: int = 0, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    a = (x[:, 0] > 0).float()
    a[:unknown_a] = -1
    return {"image": x, "a": a, "b": x[:, 1:2] - x[:, 2:3]}


def _trainer(net, rho=0.0, perturb="features", epochs=1, phases=None, momentum=0.0, loader=None, **kwargs):
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=momentum)
    return CooperativeTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=loader or [_batch()], network=net, optimizer=opt,
        loss_function=_loss(), rho=rho, perturb=perturb, phases=phases,
        prepare_batch=MultiTaskPrepareBatch("image", ["a", "b"]), **kwargs,
    )


def _shared(net: MultiTaskNet) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.encoder.parameters()]


def _record_encoder_params(net: MultiTaskNet) -> list[list[torch.Tensor]]:
    seen: list[list[torch.Tensor]] = []
    net.encoder.register_forward_pre_hook(lambda m, i: seen.append(_shared(net)))
    return seen


def test_tasks_are_updated_in_turn_within_one_iteration():
    net = _net()
    seen = _record_encoder_params(net)
    order = []
    for name, head in net.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: order.append(name))
    w0 = _shared(net)
    _trainer(net).run()  # one batch, one iteration, rho=0
    assert len(seen) == 2 and order == ["a", "b", "a", "b"]  # one forward pass per task
    assert all(torch.equal(p, q) for p, q in zip(seen[0], w0))
    assert not torch.equal(seen[1][0], w0[0])  # task b's pass sees the encoder already updated by task a

    # ... and exactly the encoder after one SGD step on task a's loss alone
    ref = _net()
    batch = _batch()
    nn.BCEWithLogitsLoss()(ref(batch["image"])["a"], batch["a"][:, None]).backward()
    expected = [p.detach() - LR * p.grad for p in ref.encoder.parameters()]
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(seen[1], expected))


@pytest.mark.parametrize("perturb", ["features", "parameters"])
def test_rho_zero_equals_plain_alternating_updates(perturb):
    loader = [_batch(unknown_a=3, seed=1), _batch(seed=2)]
    net = _net()
    _trainer(net, rho=0.0, perturb=perturb, epochs=3, momentum=0.9, loader=loader).run()

    ref = _net()
    opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=0.9)
    loss_fn = _loss()
    for _ in range(3):
        for batch in loader:
            for task in ("a", "b"):
                opt.zero_grad(set_to_none=True)
                loss_fn(ref(batch["image"]), batch, tasks=[task])[task].backward()
                opt.step()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_parameter_perturbation_is_applied_then_removed_exactly():
    rho = 0.5
    net = _net()
    seen = _record_encoder_params(net)
    w0 = _shared(net)
    tr = _trainer(net, rho=rho, perturb="parameters", phases=[{"epochs": 1, "tasks": ["a"]}])
    at_step = []
    tr.optimizer.register_step_pre_hook(lambda opt, a, k: at_step.append(_shared(net)))
    tr.run()
    assert len(seen) == 2 and len(at_step) == 1  # first pass, perturbed pass, one step
    batch = _batch()

    # the ascent step: radius rho (global norm over the shared parameters) along task a's gradient
    ref = _net()
    nn.BCEWithLogitsLoss()(ref(batch["image"])["a"], batch["a"][:, None]).backward()
    g = [p.grad for p in ref.encoder.parameters()]
    g_norm = torch.sqrt(sum((x**2).sum() for x in g))
    eps = [q - p for p, q in zip(w0, seen[1])]
    assert math.isclose(float(torch.sqrt(sum((e**2).sum() for e in eps))), rho, rel_tol=1e-5)
    assert all(torch.allclose(e, rho * x / g_norm, atol=1e-6) for e, x in zip(eps, g))

    # removed exactly before the step; the step uses the gradient at the perturbed point
    assert all(torch.equal(p, q) for p, q in zip(at_step[0], w0))
    pert = _net()
    with torch.no_grad():
        for p, e in zip(pert.encoder.parameters(), eps):
            p.add_(e)
    nn.BCEWithLogitsLoss()(pert(batch["image"])["a"], batch["a"][:, None]).backward()
    for p, p0, q in zip(net.encoder.parameters(), w0, pert.encoder.parameters()):
        assert torch.allclose(p, p0 - LR * q.grad, atol=1e-6)
    for p, q in zip(net.heads["a"].parameters(), pert.heads["a"].parameters()):
        assert torch.allclose(p, q.detach() - LR * q.grad, atol=1e-6)  # the head itself is not perturbed
    assert torch.equal(net.heads["b"].weight, _net().heads["b"].weight)  # task b inactive: untouched


def test_feature_perturbation_is_an_ascent_step_and_is_removed():
    rho, unknown = 0.3, 3
    net = _net()
    enc_out, head_in = [], []
    net.encoder.register_forward_hook(lambda m, i, o: enc_out.append(o.detach().clone()))
    net.heads["a"].register_forward_pre_hook(lambda m, i: head_in.append(i[0].detach().clone()))
    loader = [_batch(unknown_a=unknown)]
    _trainer(net, rho=rho, phases=[{"epochs": 1, "tasks": ["a"]}], loader=loader).run()
    assert len(enc_out) == 2 and len(head_in) == 2
    assert len(net.encoder._forward_hooks) == 1  # only this test's hook is left
    features = enc_out[0]
    assert torch.equal(head_in[0], features)  # first pass: unperturbed
    assert torch.allclose(enc_out[1], features)  # the encoder output itself is never modified
    eps = head_in[1] - enc_out[1]
    assert torch.equal(eps[:unknown], torch.zeros_like(eps[:unknown]))  # samples without a label: no perturbation
    assert torch.allclose(eps[unknown:].norm(dim=1), rho * features[unknown:].norm(dim=1), rtol=1e-4)

    batch = loader[0]
    ref = _net()
    head, bce = ref.heads["a"], nn.BCEWithLogitsLoss()
    labelled = batch["a"] != -1
    target = batch["a"][labelled][:, None]
    loss_at = [float(bce(head(f[labelled]), target).detach()) for f in (features, features + eps)]
    assert loss_at[1] > loss_at[0]  # ascent
    # descent: the gradient of the loss at the perturbed features, for the head and (through them) the encoder
    feats = ref.encoder(batch["image"])
    bce(head((feats + eps)[labelled]), target).backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        if q.grad is not None:
            assert torch.allclose(p, q.detach() - LR * q.grad, atol=1e-6)
    assert torch.equal(net.heads["b"].weight, ref.heads["b"].weight)


@pytest.mark.parametrize("perturb", ["features", "parameters"])
def test_trains_a_tiny_two_task_problem(perturb):
    loader = [_batch(seed=s) for s in range(4)]
    tr = _trainer(_net(), rho=0.05, perturb=perturb, epochs=25, loader=loader)
    epoch_loss, running = [], []
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: running.append(e.state.output["task_losses"]))
    tr.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_loss.append(
        {t: sum(r[t] for r in running[-len(loader):]) for t in ("a", "b")}))
    tr.run()
    for task in ("a", "b"):
        assert epoch_loss[-1][task] < 0.7 * epoch_loss[0][task], task
    assert tr.state.output["task_weights"] == {"a": 1.0, "b": 1.0}
    assert set(tr.state.output["pred"]) == {"a", "b"}


class _NoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(3, 1)

    def forward(self, x):
        return {"a": self.trunk(x), "b": self.trunk(x)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": "big"}, "rho"),
        ({"perturb": "gradients"}, "perturb"),
        ({"weighting": get_weighting("uw", ["a", "b"])}, "weighting"),
        ({"network": _NoEncoder()}, "encoder"),
        ({"phases": [{"epochs": 1, "tasks": ["zzz"]}]}, "phases"),
    ],
)
def test_invalid_arguments(kwargs, match):
    net = kwargs.pop("network", _net())
    with pytest.raises(ValueError, match=match):
        _trainer(net, **kwargs)


def test_parameters_mode_needs_trainable_shared_parameters():
    net = _net()
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="shared parameters"):
        _trainer(net, rho=0.1, perturb="parameters")
    _trainer(_NoEncoder(), rho=0.1, perturb="parameters")  # no shared_parameters(): SAM on all parameters


# ---------------------------------------------------------------------- U-Net inside the trainer, resume round trip


def _unet_loader() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(2):
        image = torch.randn(4, 2, 16, 16, generator=g)
        seg = (image[:, :1] > 0.5).float()
        idh = torch.tensor([1.0, 0.0, -1.0, 1.0])  # one unknown label per batch
        batches.append({"image": image, "seg": seg, "idh": idh})
    return batches


def _unet_trainer(epochs: int, ckpt_dir: str, calls: dict[str, int] | None = None) -> CooperativeTrainer:
    torch.manual_seed(0)
    net = UNetSegClassifier(2, 1, features=(4, 8), cls_hidden=8, cls_dropout=0.0, seg_task="seg", cls_task="idh")
    if calls is not None:
        for name, head in net.heads.items():
            head.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss = MultiTaskLoss({
        "seg": {"loss": nn.BCEWithLogitsLoss(), "target": "seg"},
        "idh": {"loss": nn.BCEWithLogitsLoss(), "target": "idh", "missing_value": -1},
    })
    resume = ResumeCheckpoint(ckpt_dir, {"network": net, "optimizer": opt}, signature={"run": "coop"})
    return CooperativeTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=_unet_loader(), network=net, optimizer=opt,
        loss_function=loss, rho=0.05, prepare_batch=MultiTaskPrepareBatch("image", ["seg", "idh"]),
        inactive_task_kwargs={"seg": {"segment": False}, "idh": {"classify": False}}, train_handlers=[resume],
    )


def test_unet_two_epochs_and_resume_round_trip(tmp_path):
    calls: dict[str, int] = {}
    straight = _unet_trainer(2, str(tmp_path / "straight"), calls)
    straight.run()
    assert calls == {"seg": 2 * 2 * 2, "idh": 2 * 2 * 2}  # epochs x batches x (pass + perturbed pass), own pass only
    assert set(straight.state.output["task_losses"]) == {"seg", "idh"}
    assert straight.state.output["pred"]["seg"].shape == (4, 1, 16, 16)

    _unet_trainer(1, str(tmp_path / "resumed")).run()  # interrupted after epoch 1
    resumed = _unet_trainer(2, str(tmp_path / "resumed"))
    resumed.run()
    assert resumed.state.epoch == 2 and resumed.state.iteration == 4
    for (name, p), q in zip(straight.network.named_parameters(), resumed.network.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


# ------------------------------------------------------------------------------------------------ DDP, two processes


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = nn.parallel.DistributedDataParallel(_net(), find_unused_parameters=True)
        loader = [_batch(unknown_a=8 if rank == 1 else 2, seed=10 + rank)]  # rank 1 has no label for task a
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        tr = CooperativeTrainer(
            device="cpu", max_epochs=2, train_data_loader=loader, network=net, optimizer=opt,
            loss_function=_loss(), rho=0.1, prepare_batch=MultiTaskPrepareBatch("image", ["a", "b"]),
        )
        tr.run()
        torch.save({"params": [p.detach() for p in net.module.parameters()],
                    "losses": tr.state.output["task_losses"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_stay_in_step_with_labels_on_one_rank_only(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0["losses"]) == {"a", "b"} and set(r1["losses"]) == {"b"}
    before = list(_net().parameters())
    for p, q, b in zip(r0["params"], r1["params"], before):
        assert torch.equal(p, q) and not torch.equal(p, b.detach())
