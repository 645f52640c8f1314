"""Tests of the loss-weighting / gradient methods in ``common.weighting`` (tiny models, CPU, fast)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from common.weighting import (
    FAMO,
    IMTL,
    WEIGHTINGS,
    CAGrad,
    DynamicWeightAverage,
    GradNorm,
    PCGrad,
    UncertaintyWeighting,
    get_weighting,
)
from common.weighting.torchjd_adaptor import AGGREGATORS, SCALARIZERS

TASKS = ["a", "b", "c"]
OWN = ["dwa", "gradnorm", "imtl", "famo"]  # the project's own methods; the rest come from TorchJD
NAMES = sorted(WEIGHTINGS)
#: constructor arguments a method needs beyond the task names (none at present)
NEEDED: dict[str, dict] = {}
_SOLVERS = {s.name: s.requires for s in AGGREGATORS}


def solver_missing(name: str) -> bool:
    from monai.utils import optional_import

    return not all(optional_import(m)[1] for m in _SOLVERS.get(name, ()))


def needs_solver(name: str):
    """``name`` as a pytest param, skipped where its optional solver is not installed."""
    return pytest.param(name, marks=pytest.mark.skipif(solver_missing(name), reason=f"{name}: solver missing"))


PARAMS = [needs_solver(n) for n in NAMES]
ATOL = 1e-6


# ----------------------------------------------------------------------------------------------- helpers
def make_model(seed: int = 0, tasks: list[str] = TASKS) -> nn.ModuleDict:
    """Linear(4, 8) + tanh trunk and one Linear(8, 1) head per task."""
    torch.manual_seed(seed)
    return nn.ModuleDict({"trunk": nn.Linear(4, 8), "heads": nn.ModuleDict({t: nn.Linear(8, 1) for t in tasks})})


def make_data(seed: int = 1, tasks: list[str] = TASKS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    return x, {t: torch.randn(16, 1, generator=gen) for t in tasks}


def model_losses(model, x, ys, scales=None, tasks=None) -> dict[str, torch.Tensor]:
    """Positive MSE losses of the present ``tasks`` (default all), optionally multiplied by ``scales``."""
    feats = torch.tanh(model["trunk"](x))
    tasks = list(ys) if tasks is None else tasks
    scales = scales or {}
    return {t: scales.get(t, 1.0) * ((model["heads"][t](feats) - ys[t]) ** 2).mean() for t in tasks}


def shared(model) -> list[nn.Parameter]:
    return list(model["trunk"].parameters())


def flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def linear_problem(grads: list[list[float]]):
    """Shared parameter ``p`` and losses ``L_i = g_i . p + (i + 1) ||h_i||^2``: shared gradient of task i is
    exactly ``g_i``, head ``h_i`` gets ``2 (i + 1) h_i``."""
    g = torch.tensor(grads, dtype=torch.float32)
    p = nn.Parameter(torch.zeros(g.shape[1]))
    heads = [nn.Parameter(torch.tensor([0.5 * (i + 1), -1.0])) for i in range(g.shape[0])]
    names = [f"t{i}" for i in range(g.shape[0])]
    losses = {n: (g[i] * p).sum() + (i + 1) * (heads[i] ** 2).sum() for i, n in enumerate(names)}
    return names, g, p, heads, losses


def scalar_losses(values: dict[str, float]) -> tuple[nn.Parameter, dict[str, torch.Tensor]]:
    """Losses with the given values, all ``value * p`` of one parameter ``p = 1``."""
    p = nn.Parameter(torch.ones(1))
    return p, {k: v * p.sum() for k, v in values.items()}


# ------------------------------------------------------------------------------------- registry / contract
def test_registry_has_every_method():
    assert {"ew", "uw", "pcgrad", "cagrad", "upgrad", "mgda", "imtl_g", "imtl_l", "nash_mtl", "config"} <= set(NAMES)
    assert set(OWN) <= set(NAMES)
    assert {s.name for s in AGGREGATORS} | {s.name for s in SCALARIZERS} | set(OWN) == set(NAMES)
    with pytest.raises(ValueError, match="name"):
        get_weighting("no-such-method", TASKS)


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("present", [TASKS, ["a", "c"]])
def test_backward_sets_finite_grads(name, present):
    model = make_model()
    x, ys = make_data()
    weighting = get_weighting(name, TASKS, **NEEDED.get(name, {}))
    weights = weighting.backward(model_losses(model, x, ys, tasks=present), shared(model))
    assert list(weights) == present
    assert all(isinstance(w, float) and math.isfinite(w) for w in weights.values())
    for p in shared(model):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for t in TASKS:
        for p in model["heads"][t].parameters():
            if t in present:
                assert p.grad is not None and torch.isfinite(p.grad).all()
            else:
                assert p.grad is None
    for p in weighting.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize(
    "name, kwargs, arg",
    [
        ("dwa", {"tau": 0.0}, "tau"),
        ("gradnorm", {"alpha": -0.1}, "alpha"),
        ("gradnorm", {"lr": 0.0}, "lr"),
        ("cagrad", {"c": -0.1}, "c"),
        ("upgrad", {"use_autogram": "yes"}, "use_autogram"),
        ("config", {"use_autogram": True}, "use_autogram"),
        ("stch", {"mu": 0.0}, "mu"),
        ("mgda", {"no_such_argument": 1}, "arguments"),
        ("pcgrad", {"seed": "x"}, "seed"),
        ("famo", {"lr": -1.0}, "lr"),
        ("famo", {"weight_decay": -1.0}, "weight_decay"),
        ("famo", {"eps": 0.0}, "eps"),
    ],
)
def test_argument_checks(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        get_weighting(name, TASKS, **kwargs)


def test_unknown_or_empty_losses_rejected():
    weighting = get_weighting("ew", TASKS)
    p, losses = scalar_losses({"zzz": 1.0})
    with pytest.raises(ValueError):
        weighting.backward(losses, [p])
    with pytest.raises(ValueError):
        weighting.backward({}, [p])


# --------------------------------------------------------------------------------------------------- EW
def test_ew_equals_plain_sum():
    model, ref = make_model(), make_model()
    x, ys = make_data()
    weights = get_weighting("ew", TASKS).backward(model_losses(model, x, ys), shared(model))
    sum(model_losses(ref, x, ys).values()).backward()
    assert weights == {t: 1.0 for t in TASKS}
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


# --------------------------------------------------------------------------------------------------- UW
def test_uw_weights_and_learning():
    uw = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        uw.scalarizer.log_var.copy_(torch.tensor([0.3, -0.5]))  # TorchJD's UW
    p, losses = scalar_losses({"a": 10.0, "b": 0.1})
    weights = uw.backward(losses, [p])
    s = torch.tensor([0.3, -0.5])
    assert weights["a"] == pytest.approx(0.5 * math.exp(-0.3)) and weights["b"] == pytest.approx(0.5 * math.exp(0.5))
    # d/ds (0.5 exp(-s) L + 0.5 s) = 0.5 - 0.5 exp(-s) L
    log_var = uw.scalarizer.log_var
    torch.testing.assert_close(log_var.grad, 0.5 - 0.5 * torch.exp(-s) * torch.tensor([10.0, 0.1]))
    assert p.grad.item() == pytest.approx(0.5 * math.exp(-0.3) * 10 + 0.5 * math.exp(0.5) * 0.1, rel=1e-5)
    torch.optim.SGD(uw.parameters(), lr=0.1).step()
    assert log_var[0] > 0.3  # large loss: s_a grows, its weight falls
    assert log_var[1] < -0.5  # small loss: s_b falls, its weight grows
    p, losses = scalar_losses({"a": 10.0, "b": 0.1})
    after = uw.backward(losses, [p])
    assert after["a"] < weights["a"] and after["b"] > weights["b"]
    # a batch without task b: only s_a gets a gradient
    uw.zero_grad()
    p, losses = scalar_losses({"a": 10.0})
    assert list(uw.backward(losses, [p])) == ["a"]
    assert log_var.grad[0] != 0 and log_var.grad[1] == 0


def test_uw_loads_checkpoints_of_the_former_implementation():
    old = {"log_vars": torch.tensor([0.2, -0.1])}  # state dict of the project's own UW before TorchJD
    uw = UncertaintyWeighting(["a", "b"])
    uw.load_state_dict(old)
    torch.testing.assert_close(uw.scalarizer.log_var.detach(), old["log_vars"])


# -------------------------------------------------------------------------------------------------- DWA
def test_dwa_weights_follow_loss_ratios():
    dwa = DynamicWeightAverage(["a", "b"], tau=2.0)
    epochs = [
        [{"a": 1.0, "b": 1.2}, {"a": 1.0, "b": 0.8}],  # averages a 1.0, b 1.0
        [{"a": 0.6, "b": 0.9}, {"a": 0.4}],  # a 0.5, b 0.9 (b present in one batch only)
    ]
    for batches in epochs:
        for values in batches:
            p, losses = scalar_losses(values)
            weights = dwa.backward(losses, [p])
            assert all(w == 1.0 for w in weights.values())
            assert p.grad.item() == pytest.approx(sum(values.values()))
        dwa.on_epoch_end()
    p, losses = scalar_losses({"a": 0.3, "b": 0.8})
    weights = dwa.backward(losses, [p])
    expected = 2 * torch.softmax(torch.tensor([0.5 / 1.0, 0.9 / 1.0]) / 2.0, dim=0)
    assert weights["b"] > weights["a"]
    assert weights["a"] == pytest.approx(float(expected[0])) and weights["b"] == pytest.approx(float(expected[1]))
    assert sum(weights.values()) == pytest.approx(2.0)
    assert p.grad.item() == pytest.approx(weights["a"] * 0.3 + weights["b"] * 0.8, rel=1e-5)


# --------------------------------------------------------------------------------------------- GradNorm
def test_gradnorm_reduces_weight_of_task_with_large_gradient():
    model, ref = make_model(tasks=["a", "b"]), make_model(tasks=["a", "b"])
    x, ys = make_data(tasks=["a", "b"])
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.01)
    scales = {"a": 20.0, "b": 1.0}  # task a's gradient norm is much larger, both loss ratios are 1
    weights = gn.backward(model_losses(model, x, ys, scales), shared(model))
    assert weights == {"a": 1.0, "b": 1.0}
    # network gradient: weighted sum with the weights used
    sum(model_losses(ref, x, ys, scales).values()).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    # weight update: w_i - lr * sign(G_i - mean G) * ||g_i||, renormalised to sum T
    norms = []
    for t in ["a", "b"]:
        g = torch.autograd.grad(model_losses(ref, x, ys, scales, tasks=[t])[t], shared(ref))
        norms.append(float(torch.cat([v.reshape(-1) for v in g]).norm()))
    new = torch.tensor([1.0 - 0.01 * norms[0], 1.0 + 0.01 * norms[1]]).clamp_min(1e-3)
    torch.testing.assert_close(gn.weights, 2 * new / new.sum())
    assert gn.weights[0] < 1.0 < gn.weights[1]
    for _ in range(3):
        model.zero_grad()
        weights = gn.backward(model_losses(model, x, ys, scales), shared(model))
        assert sum(weights.values()) == pytest.approx(2.0)
    assert float(gn.weights.sum()) == pytest.approx(2.0)
    assert weights["a"] < weights["b"]


def test_gradnorm_initial_losses_and_subset():
    model = make_model()
    x, ys = make_data()
    gn = GradNorm(TASKS)
    gn.backward(model_losses(model, x, ys, tasks=["a", "b"]), shared(model))
    assert torch.isnan(gn.initial_losses[2]) and torch.isfinite(gn.initial_losses[:2]).all()
    model.zero_grad()
    gn.backward(model_losses(model, x, ys, tasks=["b", "c"]), shared(model))
    assert torch.isfinite(gn.initial_losses).all()
    assert float(gn.weights.sum()) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------- PCGrad
def test_pcgrad_projects_conflicting_gradients():
    names, g, p, heads, losses = linear_problem([[1.0, 0.0], [-1.0, 1.0]])
    PCGrad(names, seed=0).backward(losses, [p])
    g1, g2 = g
    g1_pc = g1 - torch.dot(g1, g2) / torch.dot(g2, g2) * g2
    g2_pc = g2 - torch.dot(g2, g1) / torch.dot(g1, g1) * g1
    torch.testing.assert_close(p.grad, g1_pc + g2_pc)
    torch.testing.assert_close(p.grad, torch.tensor([0.5, 1.5]))
    assert abs(torch.dot(g1_pc, g2)) < ATOL and abs(torch.dot(g2_pc, g1)) < ATOL  # conflict removed
    for i, h in enumerate(heads):  # task-specific params: their own loss's gradient
        torch.testing.assert_close(h.grad, 2 * (i + 1) * h.detach())


def test_pcgrad_without_conflict_is_plain_sum():
    names, g, p, _, losses = linear_problem([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    PCGrad(names, seed=0).backward(losses, [p])
    torch.testing.assert_close(p.grad, g.sum(0))


def test_pcgrad_seeded_order_is_reproducible():
    grads = [[1.0, 0.0, 0.0], [-0.9, 1.0, 0.0], [-0.5, -1.0, 0.3]]
    results = []
    for seed in [3, 3]:
        names, g, p, _, losses = linear_problem(grads)
        pc = PCGrad(names, seed=seed)
        pc.backward(losses, [p])
        results.append(p.grad.clone())
    torch.testing.assert_close(results[0], results[1])
    # the result is the formula applied in the generator's orders
    gen = torch.Generator().manual_seed(3)
    orders = [torch.randperm(3, generator=gen).tolist() for _ in range(3)]
    expected = torch.zeros(3)
    for i in range(3):
        gi = g[i].clone()
        for j in orders[i]:
            if j != i and torch.dot(gi, g[j]) < 0:
                gi = gi - torch.dot(gi, g[j]) / torch.dot(g[j], g[j]) * g[j]
        expected += gi
    torch.testing.assert_close(results[0], expected)


# ----------------------------------------------------------------------------------------------- CAGrad
def test_cagrad_c0_is_mean_gradient():
    names, g, p, heads, losses = linear_problem([[1.0, 0.0], [-0.8, 0.3], [0.2, -1.0]])
    CAGrad(names, c=0.0).backward(losses, [p])  # TorchJD's CAGrad
    torch.testing.assert_close(p.grad, g.mean(0))
    for i, h in enumerate(heads):
        torch.testing.assert_close(h.grad, 2 * (i + 1) * h.detach())


@pytest.mark.parametrize("grads", [[[1.0, 0.0], [-0.8, 0.3]], [[1.0, 0.2, 0.0], [-0.5, 1.0, 0.1], [0.1, -0.9, 0.4]]])
def test_cagrad_constraint_and_worst_case_improvement(grads):
    c = 0.4
    names, g, p, _, losses = linear_problem(grads)
    weights = CAGrad(names, c=c).backward(losses, [p])
    d = p.grad  # TorchJD's CAGrad: no rescale by 1 + c^2
    torch.testing.assert_close(d, sum(w * g[i] for i, w in enumerate(weights.values())))
    g0 = g.mean(0)
    assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e-5
    worst_d, worst_g0 = float((g @ d).min()), float((g @ g0).min())
    assert worst_d > worst_g0 + 1e-3
    # d maximises the worst inner product over the ball: no sampled point of the ball does better
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4000, g.shape[1], generator=gen)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=gen) ** (1 / g.shape[1])
    candidates = g0 + c * g0.norm() * u
    assert worst_d >= float((candidates @ g.T).min(1).values.max()) - 1e-4


def test_cagrad_solver_matches_grid_search():
    g = torch.tensor([[1.0, 0.3, -0.2], [-0.7, 0.5, 0.1]])
    c = 0.5
    names, _, p, _, losses = linear_problem(g.tolist())
    weights = torch.tensor(list(CAGrad(names, c=c).backward(losses, [p]).values()), dtype=torch.float64)
    g = g.double()
    w = (weights - 0.5) / (weights - 0.5).sum()  # TorchJD: weights = 1/m + ||g0|| c / ||g_w|| * w
    g0 = g.mean(0)

    def objective(w):
        gw = w @ g
        return float(gw @ g0 + c * g0.norm() * gw.norm())

    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    fine = torch.stack([t, 1 - t], 1) @ g
    grid = float((fine @ g0 + c * g0.norm() * fine.norm(dim=1)).min())
    assert float(w.sum()) == pytest.approx(1.0) and float(w.min()) >= -1e-6
    assert objective(w) <= grid + 1e-6


# ------------------------------------------------------------------------------------------------- IMTL
@pytest.mark.parametrize("scales", [[0.0, 0.0, 0.0], [0.3, -0.2, 0.1]])
def test_imtl_equal_projections_on_unit_gradients(scales):
    names, g, p, heads, losses = linear_problem([[1.0, 0.0, 0.5, 0.0], [-0.5, 2.0, 0.0, 0.1], [0.3, -0.4, 1.5, 1.0]])
    imtl = IMTL(names)
    with torch.no_grad():
        imtl.loss_scale.copy_(torch.tensor(scales))
    values = torch.stack([loss.detach() for loss in losses.values()])
    weights = imtl.backward(losses, [p])
    units = g / g.norm(dim=1, keepdim=True)
    proj = units @ p.grad
    torch.testing.assert_close(proj, proj[0].expand(3), atol=1e-5, rtol=1e-5)
    alpha = torch.tensor(list(weights.values())) / torch.exp(torch.tensor(scales))
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(p.grad, (alpha * torch.exp(torch.tensor(scales))) @ g, atol=1e-5, rtol=1e-5)
    # IMTL-L: d/ds (exp(s) L - s) = exp(s) L - 1; heads get the gradient of exp(s_i) L_i
    torch.testing.assert_close(imtl.loss_scale.grad, torch.exp(torch.tensor(scales)) * values - 1)
    for i, h in enumerate(heads):
        torch.testing.assert_close(h.grad, math.exp(scales[i]) * 2 * (i + 1) * h.detach())


# ------------------------------------------------------------------------------------------------- FAMO
def test_famo_raises_weight_of_task_that_does_not_improve():
    famo = FAMO(["a", "b"])
    torch.testing.assert_close(famo.task_weights(), torch.tensor([0.5, 0.5]))
    p, losses = scalar_losses({"a": 1.0, "b": 1.0})
    assert famo.backward(losses, [p]) == pytest.approx({"a": 0.5, "b": 0.5})
    # objective sum_i z_i / c * log L_i: d/dp = sum_i z_i / (c L_i) * L_i = 1 (L_i = v_i p, p = 1)
    assert p.grad.item() == pytest.approx(1.0)
    p, losses = scalar_losses({"a": 0.5, "b": 1.0})  # a decreased, b did not
    weights = famo.backward(losses, [p])
    z = famo.task_weights()
    assert z[1] > 0.5 > z[0]
    c = float(z[0] / 0.5 + z[1] / 1.0)
    assert weights["a"] == pytest.approx(float(z[0]) / (c * 0.5)) and weights["b"] == pytest.approx(float(z[1]) / c)


def test_famo_matches_official_update_with_torch_adam():
    seq = [[1.0, 2.0, 0.5], [0.9, 2.1, 0.45], [0.7, 2.0, 0.46], [0.71, 1.5, 0.3], [0.6, 1.4, 0.31]]
    famo = FAMO(["a", "b", "c"], lr=0.025, weight_decay=1e-3)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.025, weight_decay=1e-3)
    prev = None
    for values in seq:
        p, losses = scalar_losses(dict(zip("abc", values)))
        famo.backward(losses, [p])
        cur = torch.tensor(values)
        if prev is not None:  # official FAMO.update(curr_loss)
            delta = prev.log() - cur.log()
            d = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)[0]
            opt.zero_grad()
            w.grad = d
            opt.step()
        prev = cur
        torch.testing.assert_close(famo.logits, w.detach())
    assert not torch.allclose(famo.logits, torch.zeros(3))


def test_famo_clamps_nonpositive_losses():
    famo = FAMO(["a", "b"], eps=1e-6)
    p, losses = scalar_losses({"a": 0.0, "b": 1.0})
    weights = famo.backward(losses, [p])
    assert all(math.isfinite(v) for v in weights.values())


# ---------------------------------------------------------------------------------------- state round trip
RANDOM = {s.name for s in AGGREGATORS if s.random}
KWARGS = {**{n: {"seed": 1} for n in RANDOM}, "gradnorm": {"lr": 0.05}}


def _drive(weighting, model, x, ys, steps: int = 6) -> None:
    opt = torch.optim.SGD(list(model.parameters()) + list(weighting.parameters()), lr=0.05)
    for step in range(steps):
        scales = {"a": 1.0 + step, "b": 2.0 / (1 + step), "c": 1.0}
        tasks = TASKS if step % 3 else ["a", "b"]
        opt.zero_grad()
        weighting.backward(model_losses(model, x, ys, scales, tasks), shared(model))
        opt.step()
        if step % 2 == 1:
            weighting.on_epoch_end()


@pytest.mark.parametrize("name", PARAMS)
def test_state_dict_round_trip(name):
    model = make_model()
    x, ys = make_data()
    original = get_weighting(name, TASKS, **KWARGS.get(name, {}), **NEEDED.get(name, {}))
    _drive(original, model, x, ys)
    other_kwargs = {**({"seed": 99} if name in RANDOM else KWARGS.get(name, {})), **NEEDED.get(name, {})}
    restored = get_weighting(name, TASKS, **other_kwargs)
    fresh = get_weighting(name, TASKS, **other_kwargs)
    buffer = io.BytesIO()  # through a file as a resume checkpoint, read back with weights_only as ResumeCheckpoint
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    results = []
    for weighting in (original, restored, fresh):
        m = copy.deepcopy(model)
        weights = weighting.backward(model_losses(m, x, ys, {"a": 0.5, "b": 3.0}), shared(m))
        results.append((weights, [q.grad.clone() for q in m.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6, abs=1e-9)
    for g_orig, g_rest in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_orig, g_rest)
    if name in {"uw", "imtl_l", "dwa", "gradnorm", "imtl", "famo", "gradvac", "pcd"}:  # the state matters
        assert results[2][0] != pytest.approx(results[0][0], rel=1e-6, abs=1e-9)
    if name in RANDOM:
        assert torch.equal(original.generator.get_state(), restored.generator.get_state())


# ---------------------------------------------------------------------------------- TorchJD aggregators
CONFLICTING = [
    [[1.0, 0.0, 0.2], [-0.9, 0.4, 0.0], [0.1, -1.0, 0.5]],
    [[2.0, 1.0], [-1.0, 0.1]],
    [[1.0, 0.5, -0.3, 0.0], [-0.2, 1.0, 0.4, -0.6], [-0.8, -0.7, 0.1, 0.2], [0.3, 0.0, -1.0, 0.9]],
]


@pytest.mark.parametrize("name", [needs_solver("upgrad"), needs_solver("dualproj")])
@pytest.mark.parametrize("grads", CONFLICTING)
def test_dual_cone_update_never_conflicts(name, grads):
    names, g, p, heads, losses = linear_problem(grads)
    weights = get_weighting(name, names).backward(losses, [p])
    # non-negative inner product with every task (up to the QP solver's 1e-4 regularisation)
    assert bool(((g @ p.grad) >= -1e-3 * g.norm(dim=1) * p.grad.norm()).all()), g @ p.grad
    assert bool(((g @ g.mean(0)) < 0).any())  # while the mean gradient conflicts with some task
    torch.testing.assert_close(p.grad, torch.tensor(list(weights.values())) @ g, atol=1e-5, rtol=1e-5)
    for i, h in enumerate(heads):
        torch.testing.assert_close(h.grad, 2 * (i + 1) * h.detach())


@pytest.mark.parametrize("grads", CONFLICTING)
def test_mgda_min_norm_convex_combination(grads):
    names, g, p, _, losses = linear_problem(grads)
    mgda = get_weighting("mgda", names, epsilon=1e-9, max_iters=2000)  # TorchJD's Frank-Wolfe, run longer
    w = torch.tensor(list(mgda.backward(losses, [p]).values()))
    assert float(w.min()) >= -1e-6 and float(w.sum()) == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(p.grad, w @ g, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)  # no sampled convex combination is shorter
    samples = torch.distributions.Dirichlet(torch.ones(len(names))).sample((5000,)) @ g
    assert float(p.grad.norm()) <= float(samples.norm(dim=1).min()) + 1e-3
    d = p.grad  # optimality of the min-norm point: d . g_i >= ||d||^2 for every task
    assert bool(((g @ d) >= d.dot(d) - 1e-3).all())


def test_imtl_g_equal_projections():
    names, g, p, _, losses = linear_problem([[1.0, 0.0, 0.5, 0.0], [-0.5, 2.0, 0.0, 0.1], [0.3, -0.4, 1.5, 1.0]])
    weights = get_weighting("imtl_g", names).backward(losses, [p])
    proj = (g / g.norm(dim=1, keepdim=True)) @ p.grad
    torch.testing.assert_close(proj, proj[0].expand(3), atol=1e-5, rtol=1e-5)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_imtl_l_scales_losses():
    imtl_l = get_weighting("imtl_l", ["a", "b"])
    with torch.no_grad():
        imtl_l.scalarizer.log_scale.copy_(torch.tensor([0.5, -1.0]))
    p, losses = scalar_losses({"a": 2.0, "b": 3.0})
    weights = imtl_l.backward(losses, [p])
    assert weights == pytest.approx({"a": math.exp(0.5), "b": math.exp(-1.0)}, rel=1e-5)
    torch.testing.assert_close(imtl_l.scalarizer.log_scale.grad, torch.exp(torch.tensor([0.5, -1.0])) * 
                               torch.tensor([2.0, 3.0]) - 1)


def test_stch_approaches_the_maximum():
    p, losses = scalar_losses({"a": 1.0, "b": 3.0, "c": 2.0})
    weights = get_weighting("stch", ["a", "b", "c"], mu=1e-3).backward(losses, [p])
    assert weights["b"] == pytest.approx(1 / 3, rel=1e-3) and weights["a"] < 1e-6  # gradient of max_i L_i / 3


def test_missing_solver_names_method_and_extra(monkeypatch):
    import common.weighting.torchjd_adaptor as adaptor
    from common.errors import SettingsError

    monkeypatch.setattr(adaptor, "optional_import", lambda name: (None, name != "cvxpy"))
    with pytest.raises(SettingsError, match=r"cagrad.*cvxpy.*\[solvers\]"):
        get_weighting("cagrad", TASKS)
    get_weighting("mgda", TASKS)  # needs no solver


class TinyNet(nn.Module):
    """Trunk (Linear + GroupNorm) shared by per-task heads; ``shared_parameters`` as the bundles' networks."""

    def __init__(self, tasks=TASKS):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Tanh(), nn.Linear(8, 8))
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in tasks})

    def shared_parameters(self):
        return self.trunk.parameters()

    def losses(self, x, ys, tasks):
        f = self.trunk(x)
        return {t: ((self.heads[t](f) - ys[t]) ** 2).mean() for t in tasks}


class TokenTrunk(nn.Module):
    """A module with its own parameter and parameterised children (as a ViT encoder with its CLS token)."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.linspace(-0.5, 0.5, 4))
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))

    def forward(self, x):
        return self.body(x + self.shift)


class TokenNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.trunk = TokenTrunk()


@pytest.mark.parametrize("name", ["mgda", "imtl_g", "pcgrad", needs_solver("upgrad"), "gradvac"])
@pytest.mark.parametrize("present", [TASKS, ["a", "c"]])
@pytest.mark.parametrize("net_cls", [TinyNet, TokenNet])
def test_autogram_matches_one_backward_per_task(name, present, net_cls):
    x, ys = make_data()
    grads = []
    for autogram in (False, True):
        net = net_cls()
        w = get_weighting(name, TASKS, use_autogram=autogram, **({"seed": 3} if name in RANDOM else {}))
        w.attach(net)
        weights = w.backward(net.losses(x, ys, present), list(net.shared_parameters()))
        grads.append((weights, {n: q.grad for n, q in net.named_parameters()}))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-4, abs=1e-6)
    for n, g in grads[0][1].items():
        if g is None:
            assert grads[1][1][n] is None, n
        else:
            torch.testing.assert_close(grads[1][1][n], g, atol=1e-5, rtol=1e-4)


def test_autogram_needs_attach():
    net = TinyNet()
    x, ys = make_data()
    with pytest.raises(ValueError, match="attach"):
        get_weighting("mgda", TASKS, use_autogram=True).backward(net.losses(x, ys, TASKS), list(net.parameters()))


def test_docs_list_every_method():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "weighting.md").read_text()
    assert [n for n in NAMES if f"| `{n}` |" not in text] == []
