"""The speed layer: mixed precision and channels-last forward passes, EMA weights, the per-iteration LR schedule."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler
from torch import nn

from common.engines import (
    ForwardSettings,
    MultiTaskPrepareBatch,
    MultiTaskTrainer,
    build_lr_schedule,
    float32_outputs,
)
from common.errors import SettingsError
from common.handlers import EMAWeights, ResumeCheckpoint
from common.inferers import PrecisionInferer
from common.losses import MultiTaskLoss
from common.networks import MultiTaskNet
from common.weighting import get_weighting


class ConvNet(MultiTaskNet):
    """A 2-D conv encoder with a segmentation head and a classification head."""

    def __init__(self):
        encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        cls = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
        heads = {"seg": nn.Conv2d(8, 1, 1), "cls": cls}
        super().__init__(encoder, heads)


def _loader(n=4, batches=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batches):
        x = torch.randn(n, 3, 16, 16, generator=g)
        out.append({"image": x, "seg": (x[:, :1] > 0).float(), "cls": (x.mean((1, 2, 3)) > 0).float()[:, None]})
    return out


def _trainer(net, epochs=2, precision="fp32", memory_format="contiguous", weighting="ew", loader=None):
    loss = MultiTaskLoss({
        "seg": {"loss": nn.BCEWithLogitsLoss(), "target": "seg"},
        "cls": {"loss": nn.BCEWithLogitsLoss(), "target": "cls"},
    })
    w = get_weighting(weighting, ["seg", "cls"])
    opt = torch.optim.AdamW(list(net.parameters()) + list(w.parameters()), lr=0.01)
    return MultiTaskTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=loader or _loader(), network=net, optimizer=opt,
        loss_function=loss, weighting=w, prepare_batch=MultiTaskPrepareBatch("image", ["seg", "cls"]),
        precision=precision, memory_format=memory_format,
    )


def test_forward_settings_checks_and_outputs():
    with pytest.raises(SettingsError, match="precision"):
        ForwardSettings("fp8")
    with pytest.raises(SettingsError, match="fp16"):
        ForwardSettings("fp16", device="cpu")
    with pytest.raises(SettingsError, match="memory_format"):
        ForwardSettings(memory_format="nhwc")
    out = float32_outputs({"a": torch.ones(2, dtype=torch.bfloat16), "b": [torch.ones(1, dtype=torch.float16)],
                           "c": torch.ones(1, dtype=torch.long)})
    assert out["a"].dtype == out["b"][0].dtype == torch.float32 and out["c"].dtype == torch.long
    net = ConvNet()
    settings = ForwardSettings("bf16", "channels_last")
    inner = []
    net.encoder.register_forward_hook(lambda m, i, o: inner.append((i[0], o)))
    preds = settings.forward(net, torch.randn(2, 3, 8, 8))
    assert inner[0][1].dtype == torch.bfloat16  # the convolution ran in bf16 ...
    assert inner[0][0].is_contiguous(memory_format=torch.channels_last)
    assert net.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert {v.dtype for v in preds.values()} == {torch.float32}  # ... the outputs come back as float32
    assert net.encoder[0].weight.dtype == torch.float32


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_bf16_training_keeps_float32_parameters(memory_format, tmp_path):
    torch.manual_seed(0)
    net = ConvNet()
    tr = _trainer(net, precision="bf16", memory_format=memory_format)
    seen = []

    def check(engine):
        seen.append(dict(engine.state.output["task_losses"]))
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())
        assert all(v.dtype == torch.float32 for v in engine.state.output["pred"].values())

    tr.add_event_handler(Events.ITERATION_COMPLETED, check)
    tr.run()
    assert len(seen) == 6 and all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in seen)
    assert sum(seen[-1].values()) < sum(seen[0].values())
    torch.save({"model": net.state_dict()}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)["model"]
    assert {v.dtype for k, v in saved.items() if v.is_floating_point()} == {torch.float32}


def test_fp16_refuses_weightings_that_loss_scaling_would_change():
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="fp16"):
            _trainer(ConvNet(), precision="fp16")
        return
    with pytest.raises(SettingsError, match="weighting"):
        net = ConvNet().cuda()
        loss = MultiTaskLoss({"seg": {"loss": nn.BCEWithLogitsLoss(), "target": "seg"}})
        w = get_weighting("uw", ["seg"])
        MultiTaskTrainer(
            device="cuda", max_epochs=1, train_data_loader=_loader(), network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, weighting=w, precision="fp16",
        )


def test_precision_inferer_returns_float32_and_reaches_wrapped_attributes():
    from monai.inferers import SlidingWindowInferer

    net = ConvNet().eval()
    inferer = PrecisionInferer(SlidingWindowInferer(roi_size=(8, 8)), precision="bf16")
    assert inferer.roi_size == (8, 8)
    with torch.no_grad():
        out = inferer(torch.randn(1, 3, 16, 16), lambda x: net(x)["seg"])
    assert out.dtype == torch.float32 and out.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="inferer"):
        PrecisionInferer(inferer=3)


def test_ema_is_used_for_validation_and_kept_at_the_end():
    torch.manual_seed(0)
    net = ConvNet()
    tr = _trainer(net, epochs=2)
    validator = Engine(lambda e, b: None)
    seen_in_validation = []
    validator.add_event_handler(
        Events.ITERATION_STARTED, lambda e: seen_in_validation.append(net.encoder[0].weight.detach().clone())
    )
    ema = EMAWeights(net, decay=0.9, validator=validator)
    ema.attach(tr)
    raw_after_val = []

    def validate(engine):
        validator.run([0])
        raw_after_val.append(net.encoder[0].weight.detach().clone())

    tr.add_event_handler(Events.EPOCH_COMPLETED, validate)
    raw_at_end = []
    weight = net.encoder[0].weight
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: raw_at_end.append(weight.detach().clone()))
    tr.run()
    ema_w = ema.ema.module.encoder[0].weight
    assert not torch.allclose(ema_w, raw_at_end[-1])  # the average lags the raw weights
    assert torch.equal(seen_in_validation[-1], ema_w)  # validation saw the EMA weights ...
    assert torch.equal(raw_after_val[0], raw_at_end[2])  # ... and training continued from the raw weights
    assert torch.equal(net.encoder[0].weight, ema_w)  # the finished network holds the EMA weights
    with pytest.raises(ValueError, match="decay"):
        EMAWeights(net, decay=1.0)
    off = EMAWeights(net, decay=0)
    assert off.state_dict() == {} and off.ema is None


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_resume_restores_ema_and_schedule(kind, tmp_path):
    def run(epochs, resume):
        torch.manual_seed(0)
        net = ConvNet()
        tr = _trainer(net, epochs=epochs)
        sched = build_lr_schedule(tr.optimizer, warmup_steps=1, total_steps=4 * 3, kind=kind)
        ema = EMAWeights(net, decay=0.8)
        lrs = []
        ResumeCheckpoint(
            str(tmp_path), {"network": net, "optimizer": tr.optimizer, "lr_scheduler": sched, "ema": ema},
            resume=resume,
        ).attach(tr)
        LrScheduleHandler(sched, print_lr=False, epoch_level=False).attach(tr)
        ema.attach(tr)
        tr.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(tr.optimizer.param_groups[0]["lr"]))
        tr.run()
        return ema, lrs, sched

    straight, lrs, sched = run(4, resume=False)
    for f in tmp_path.glob("resume_*.pt"):
        f.unlink()
    run(2, resume=False)
    resumed, lrs_resumed, _ = run(4, resume=True)
    assert int(resumed.ema.n_averaged) == int(straight.ema.n_averaged) == 12
    for a, b in zip(straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert lrs_resumed == pytest.approx(lrs[6:])  # the schedule continues where it stopped
    # spent: the last iteration runs at <= 1/11 of the peak rate (1/(total - warmup)), the schedule ends at 0
    assert lrs[-1] <= max(lrs) / 11 + 1e-9 and sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_lr_schedule_kinds_and_checks():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = {}
    for kind in ("cosine", "linear", "constant"):
        sched = build_lr_schedule(opt, warmup_steps=2, total_steps=10, kind=kind)
        lrs[kind] = []
        for _ in range(10):
            lrs[kind].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs["linear"][:3] == pytest.approx([0.0, 0.5, 1.0]) and lrs["linear"][-1] == pytest.approx(0.125)
    assert lrs["cosine"][-1] < 0.05 and lrs["constant"][-1] == 1.0
    assert all(a >= b for a, b in zip(lrs["cosine"][2:], lrs["cosine"][3:]))  # decays monotonically after warm-up
    with pytest.raises(SettingsError, match="lr_schedule"):
        build_lr_schedule(opt, 0, 10, kind="step")
    with pytest.raises(ValueError, match="total_steps"):
        build_lr_schedule(opt, 0, -1)


@pytest.mark.parametrize("perturb", ["features", "parameters"])
def test_cooperative_training_in_bf16(perturb):
    from common.engines import CooperativeTrainer

    torch.manual_seed(0)
    net = ConvNet()
    loss = MultiTaskLoss({
        "seg": {"loss": nn.BCEWithLogitsLoss(), "target": "seg"},
        "cls": {"loss": nn.BCEWithLogitsLoss(), "target": "cls"},
    })
    tr = CooperativeTrainer(
        device="cpu", max_epochs=2, train_data_loader=_loader(), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05), loss_function=loss, rho=0.05, perturb=perturb,
        prepare_batch=MultiTaskPrepareBatch("image", ["seg", "cls"]), precision="bf16",
    )
    before = [p.detach().clone() for p in net.parameters()]
    tr.run()
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.state.output["task_losses"].values())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
