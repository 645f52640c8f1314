"""TorchJD's aggregators and scalarizers as registered weighting methods, generated from two tables.

`TorchJD <https://github.com/SimplexLab/TorchJD>`_ (MIT) implements the multi-task gradient aggregators (UPGrad,
MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, ...) on the ``(T, P)`` Jacobian of the task losses and the loss
scalarizers (UW, IMTL-L, STCH, ...) on the vector of task losses. This module wraps each one in the project's
:class:`~common.weighting.base.Weighting` contract:

- aggregators (:class:`AggregatorWeighting`) touch only the shared parameters; task-specific parameters get
  their own task's gradient, as :meth:`GradientWeighting.task_gradients` gives them. A task without labels in a
  batch has no row in the Jacobian, except for methods with a running per-task state (``fixed_rows``), which get a
  zero row for it so the state keeps its size. The returned weight of a task is the aggregator's weight of its
  gradient where TorchJD's aggregator is a weighted one, else 1.0.
- scalarizers (:class:`ScalarizerWeighting`) see the losses of the present tasks only; a per-task learnable
  parameter (UW's log-variances) is indexed to those tasks, so an absent task's parameter gets no gradient. The
  returned weight of a task is ``d total / d L_i``.

Methods needing an optional solver raise :class:`~common.errors.SettingsError` naming the pip extra when the
solver is not installed (``pip install "mtl-monai-bundles[solvers]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.utils import optional_import
from torch import nn
from torch.func import functional_call
from torchjd import aggregation, scalarization
from torchjd.autogram import Engine

from ..errors import SettingsError
from .base import GradientWeighting, Weighting, register_weighting

__all__ = [
    "AGGREGATORS",
    "SCALARIZERS",
    "AggregatorSpec",
    "AggregatorWeighting",
    "ScalarizerSpec",
    "ScalarizerWeighting",
    "EXTRA",
]

#: pip extra of this project that installs every optional solver of TorchJD's methods.
EXTRA = "solvers"
_QUADPROG = ("numpy", "qpsolvers", "quadprog")
_CVXPY = ("numpy", "cvxpy", "clarabel")


@dataclass(frozen=True)
class AggregatorSpec:
    """One row of :data:`AGGREGATORS`.

    Attributes:
        name: registry name.
        torchjd_name: class name in ``torchjd.aggregation``.
        summary: one line for the docs.
        defaults: constructor kwargs used unless the config gives them.
        requires: importable modules the method needs (optional solvers).
        random: draws from torch's CPU generator (the draws then come from an own, checkpointed generator).
        fixed_rows: keeps a running per-task state, so absent tasks get a zero row instead of no row.
        pass_n_tasks: the constructor takes ``n_tasks``.
        state_attrs: plain attributes (of the aggregator or its sub-modules) holding running state; saved in the
            weighting's extra state (numpy arrays as tensors) so a resumed run continues it.
        rebuild: method of the state's owner to call after a restore (Nash-MTL rebuilds its cvxpy problem).
    """

    name: str
    torchjd_name: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    random: bool = False
    fixed_rows: bool = False
    pass_n_tasks: bool = False
    state_attrs: tuple[str, ...] = ()
    rebuild: str = ""


@dataclass(frozen=True)
class ScalarizerSpec:
    """One row of :data:`SCALARIZERS`.

    Attributes:
        name: registry name.
        torchjd_name: class name in ``torchjd.scalarization``.
        summary: one line for the docs.
        per_task: the constructor takes the ``shape`` of the losses (one learnable value per task).
        defaults: constructor kwargs used unless the config gives them.
        legacy_keys: state-dict keys of the project's former implementation mapped to the new ones (resume of
            old checkpoints).
        class_name: Python name of the generated class (default: the TorchJD name).
    """

    name: str
    torchjd_name: str
    summary: str
    per_task: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    legacy_keys: dict[str, str] = field(default_factory=dict)
    class_name: str = ""


AGGREGATORS: tuple[AggregatorSpec, ...] = (
    AggregatorSpec("upgrad", "UPGrad", "projection of each task gradient onto the dual cone of all (Quinton & Rey "
                   "2024): never conflicts with a task", requires=_QUADPROG),
    AggregatorSpec("dualproj", "DualProj", "mean gradient projected onto the dual cone (Quinton & Rey 2024)",
                   requires=_QUADPROG),
    AggregatorSpec("mgda", "MGDA", "minimum-norm convex combination of the task gradients (Désidéri 2012)"),
    AggregatorSpec("pcgrad", "PCGrad", "gradient surgery: conflicting components removed (Yu et al. 2020)",
                   random=True),
    AggregatorSpec("cagrad", "CAGrad", "conflict-averse gradient descent (Liu et al. 2021)", defaults={"c": 0.4},
                   requires=_CVXPY),
    AggregatorSpec("imtl_g", "IMTLG", "IMTL-G: equal projections on the unit task gradients (Liu et al. 2021)"),
    AggregatorSpec("nash_mtl", "NashMTL", "Nash bargaining solution (Navon et al. 2022)",
                   requires=("numpy", "cvxpy", "ecos"), fixed_rows=True, pass_n_tasks=True,
                   state_attrs=("prvs_alpha", "step", "init_gtg", "normalization_factor"),
                   rebuild="_init_optim_problem"),
    AggregatorSpec("aligned_mtl", "AlignedMTL", "gradients aligned by the Jacobian's condition number (Senushkin "
                   "et al. 2023)"),
    AggregatorSpec("config", "ConFIG", "conflict-free inverse of the unit gradients (Liu et al. 2024)"),
    AggregatorSpec("gradvac", "GradVac", "gradient vaccine: EMA cosine targets (Wang et al. 2021)", random=True,
                   fixed_rows=True, state_attrs=("_state_key",)),
    AggregatorSpec("graddrop", "GradDrop", "sign-consistency gradient dropout (Chen et al. 2020); on GPU its "
                   "draws come from the CUDA generator and are not checkpointed", random=True),
    AggregatorSpec("fairgrad", "FairGrad", "alpha-fair gradient weights (Ban & Ji 2024)", defaults={"alpha": 1.0},
                   requires=("numpy", "scipy")),
    AggregatorSpec("pcd", "PCD", "priority-constrained descent: the first of task_names is primary, the others "
                   "get at least a fraction tau of its progress", fixed_rows=True,
                   state_attrs=("_state_key",)),
)
# Not registered: Krum and TrimmedMean (Byzantine-robust: they discard whole gradients and need more objectives
# than 2-4 task losses, fewer still when a batch lacks some labels); Mean/Sum/Random/Constant (ew covers them);
# ExcessMTL, SDMGrad, MoDo, CR-MOGM (matrix-only weightings or wrappers without an aggregator in 0.18).

SCALARIZERS: tuple[ScalarizerSpec, ...] = (
    ScalarizerSpec("ew", "Sum", "equal weighting: plain sum of the task losses", class_name="EqualWeighting"),
    ScalarizerSpec("uw", "UW", "uncertainty weighting, learnable log-variances (Kendall et al. 2018)",
                   per_task=True, legacy_keys={"log_vars": "scalarizer.log_var"},
                   class_name="UncertaintyWeighting"),
    ScalarizerSpec("imtl_l", "IMTLL", "IMTL-L: learnable loss scales exp(s) L - s (Liu et al. 2021)",
                   per_task=True),
    ScalarizerSpec("stch", "STCH", "smooth Tchebycheff scalarization (Lin et al. 2024); mu defaults to 0.1",
                   defaults={"mu": 0.1}),
    ScalarizerSpec("geometric_mean", "GeometricMean", "geometric mean of the task losses"),
)


def _require(name: str, modules: Sequence[str]) -> None:
    """Raise :class:`SettingsError` naming the method and the pip extra when a solver module is missing."""
    missing = [m for m in modules if not optional_import(m)[1]]
    if missing:
        raise SettingsError(
            f"weighting '{name}' needs {missing}, which are not installed: "
            f'pip install "mtl-monai-bundles[{EXTRA}]" (or "torchjd[full]").'
        )


def _kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Lists from JSON configs (``pref_vector``, ``weights``, ...) become float tensors."""
    return {k: torch.tensor(v, dtype=torch.float32) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}


def _to_saved(value: Any) -> Any:
    """numpy arrays become tensors (checkpoints load with ``weights_only``)."""
    return torch.from_numpy(value.copy()) if type(value).__module__ == "numpy" and hasattr(value, "shape") else value


def _from_saved(value: Any, current: Any) -> Any:
    """Back to a numpy array where the attribute held one."""
    if isinstance(value, torch.Tensor) and type(current).__module__ == "numpy":
        return value.numpy().copy()
    return value


class AggregatorWeighting(GradientWeighting):
    """A TorchJD aggregator applied to the ``(T, P)`` Jacobian of the task losses w.r.t. the shared parameters.

    Subclasses are generated from :data:`AGGREGATORS`; ``spec`` is their row. Extra keyword arguments go to the
    TorchJD constructor (lists become tensors).

    Randomness (``spec.random``): the aggregator draws from torch's global CPU generator; the wrapper swaps in an
    own generator for the call (seeded by ``seed``, else from the global generator) and saves its state in the
    state dict, so a resumed run draws the same numbers. Draws a method makes on a CUDA device are not covered.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        use_autogram: compute the Gramian of the Jacobian with TorchJD's autogram engine instead of one backward
            per task (Gramian-based aggregators only; needs :meth:`attach` to be called with the network before
            its forward pass, as :class:`~common.engines.MultiTaskTrainer` does). Then the shared gradient is
            ``sum_i w_i grad L_i`` from one weighted backward, and task-specific parameters get their own gradient.
        seed: seed of the own generator of random methods.
        kwargs: constructor arguments of the TorchJD aggregator.
    """

    spec: AggregatorSpec

    def __init__(
        self, task_names: Sequence[str], use_autogram: bool = False, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(task_names)
        if isinstance(use_autogram, str) and use_autogram.lower() in ("true", "false"):
            use_autogram = use_autogram.lower() == "true"  # the bundle CLI passes JSON's true as a string
        if not isinstance(use_autogram, bool):
            raise ValueError(f"use_autogram must be a bool, got {use_autogram!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}.")
        _require(self.spec.name, self.spec.requires)
        args = {**self.spec.defaults, **_kwargs(kwargs)}
        if self.spec.pass_n_tasks:
            args["n_tasks"] = len(self.task_names)
        cls = getattr(aggregation, self.spec.torchjd_name)
        try:
            self.aggregator = cls(**args)
        except ImportError as err:  # a dependency find_spec saw but cannot import
            raise SettingsError(f"weighting '{self.spec.name}': {err}") from err
        except TypeError as err:
            raise ValueError(f"weighting '{self.spec.name}' got invalid arguments {sorted(args)}: {err}") from err
        if use_autogram and not isinstance(self.aggregator, aggregation.GramianWeightedAggregator):
            raise ValueError(f"use_autogram needs a Gramian-based aggregator; '{self.spec.name}' is not one.")
        self.use_autogram = use_autogram
        self._engine: Engine | None = None
        self._other_params: list[nn.Parameter] = []
        self.generator: torch.Generator | None = None
        if self.spec.random:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self.generator = torch.Generator().manual_seed(seed)

    def attach(self, network: nn.Module) -> None:
        """Hook the autogram engine on the modules holding the shared parameters (no-op without autogram)."""
        if not self.use_autogram:
            return
        shared_fn = getattr(network, "shared_parameters", None)
        shared = {id(p) for p in (shared_fn() if callable(shared_fn) else network.parameters()) if p.requires_grad}
        modules: list[nn.Module] = []

        def visit(module: nn.Module) -> None:  # the largest sub-modules whose parameters are all shared
            params = [p for p in module.parameters() if p.requires_grad]
            if params and all(id(p) in shared for p in params):
                modules.append(module)
                return
            if any(id(p) in shared for p in module.parameters(recurse=False) if p.requires_grad):
                raise ValueError(f"use_autogram: {type(module).__name__} holds shared parameters itself and has "
                                 "task-specific sub-modules; the autogram engine cannot separate them.")
            for child in module.children():
                visit(child)

        visit(network)
        self._engine = Engine(*modules, batch_dim=None)
        self._other_params = [p for p in network.parameters() if p.requires_grad and id(p) not in shared]

    def _rng(self):
        return torch.random.fork_rng(devices=[]) if self.generator is not None else nullcontext()

    def _run(self, fn, *args):
        with self._rng():
            if self.generator is not None:
                torch.set_rng_state(self.generator.get_state())
            out = fn(*args)
            if self.generator is not None:
                self.generator.set_state(torch.get_rng_state())
        return out

    def _rows(self, names: list[str], matrix: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The aggregator's input: present tasks' rows, or all tasks with zero rows (``fixed_rows``)."""
        if not self.spec.fixed_rows:
            return matrix, list(range(len(names)))
        idx = [self.task_names.index(n) for n in names]
        full = matrix.new_zeros((len(self.task_names), matrix.shape[1]))
        full[idx] = matrix
        return full, idx

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Aggregate the task gradients of the shared parameters; return each present task's weight."""
        self.check_losses(losses)
        if self.use_autogram:
            return self._backward_autogram(losses, shared_params)
        names, jac = self.task_gradients(losses, shared_params)
        rows, idx = self._rows(names, jac)
        if isinstance(self.aggregator, aggregation.WeightedAggregator):
            w = self._run(self.aggregator.weighting, rows)
            self.set_shared_gradient(w @ rows, shared_params)
            return {k: float(w[i]) for k, i in zip(names, idx)}
        self.set_shared_gradient(self._run(self.aggregator, rows), shared_params)
        return {k: 1.0 for k in names}

    def _backward_autogram(
        self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]
    ) -> dict[str, float]:
        if self._engine is None:
            raise ValueError("use_autogram needs attach(network) before the forward pass.")
        names = list(losses)
        vec = torch.stack([losses[k].reshape(()) for k in names])
        gramian = self._engine.compute_gramian(vec)
        if self.spec.fixed_rows:
            idx = [self.task_names.index(n) for n in names]
            full = gramian.new_zeros((len(self.task_names),) * 2)
            full[torch.tensor(idx)[:, None], torch.tensor(idx)[None, :]] = gramian
            w_all = self._run(self.aggregator.gramian_weighting, full)
            w = w_all[idx]
        else:
            w = self._run(self.aggregator.gramian_weighting, gramian)
        shared = [p for p in shared_params if p.requires_grad]
        for p in shared:
            p.grad = None
        others = [p for p in self._other_params if p.requires_grad]
        torch.autograd.backward(vec, grad_tensors=w.detach().to(vec), inputs=shared, retain_graph=bool(others))
        if others:
            torch.autograd.backward(vec.sum(), inputs=others)
        return {k: float(w[i]) for i, k in enumerate(names)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # TorchJD's running-state buffers start as None (absent from a fresh state dict): give them a shape first
        for mod_name, module in self.named_modules(prefix=prefix.rstrip(".")):
            for buf, value in list(module._buffers.items()):
                key = f"{mod_name}.{buf}" if mod_name else buf
                if value is None and key in state_dict:
                    module._buffers[buf] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _state_owners(self) -> list[nn.Module]:
        return [m for m in self.aggregator.modules() if any(a in vars(m) for a in self.spec.state_attrs)]

    def get_extra_state(self) -> Any:
        """Save the own generator's state and the aggregator's running state attributes."""
        state: dict[str, Any] = {}
        if self.generator is not None:
            state["generator_state"] = self.generator.get_state()
        state["aggregator"] = [
            {a: _to_saved(vars(m)[a]) for a in self.spec.state_attrs if a in vars(m)} for m in self._state_owners()
        ]
        return state

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        if self.generator is not None and "generator_state" in state:
            self.generator.set_state(state["generator_state"])
        for module, attrs in zip(self._state_owners(), state.get("aggregator", [])):
            for a, v in attrs.items():
                setattr(module, a, _from_saved(v, vars(module).get(a)))
            if self.spec.rebuild and attrs:
                getattr(module, self.spec.rebuild)()


class ScalarizerWeighting(Weighting):
    """A TorchJD scalarizer applied to the vector of the present tasks' losses (one plain backward).

    Subclasses are generated from :data:`SCALARIZERS`; ``spec`` is their row. Learnable per-task parameters
    (``spec.per_task``) are ``nn.Parameter``s of the ``scalarizer`` sub-module, trained by the main optimiser;
    for a batch with some tasks absent they are indexed to the present tasks. Extra keyword arguments go to the
    TorchJD constructor (lists become tensors).

    Args:
        task_names: names of all tasks the method may see, in a fixed order.
        kwargs: constructor arguments of the TorchJD scalarizer.
    """

    spec: ScalarizerSpec

    def __init__(self, task_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(task_names)
        args = {**self.spec.defaults, **_kwargs(kwargs)}
        if self.spec.per_task:
            args["shape"] = len(self.task_names)
        try:
            self.scalarizer = getattr(scalarization, self.spec.torchjd_name)(**args)
        except TypeError as err:
            raise ValueError(f"weighting '{self.spec.name}' got invalid arguments {sorted(args)}: {err}") from err

    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backward the scalarized losses; return ``d total / d L_i`` of every present task."""
        self.check_losses(losses)
        names = list(losses)
        values = torch.stack([losses[k].reshape(()) for k in names])
        if self.spec.per_task and len(names) < len(self.task_names):
            idx = torch.tensor([self.task_names.index(k) for k in names])
            sliced = {n: p[idx.to(p.device)] for n, p in self.scalarizer.named_parameters()}
            total = functional_call(self.scalarizer, sliced, (values,))
        else:
            total = self.scalarizer(values)
        (weights,) = torch.autograd.grad(total, values, retain_graph=True)
        total.backward()
        return {k: float(weights[i]) for i, k in enumerate(names)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        for old, new in self.spec.legacy_keys.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _generate() -> dict[str, type[Weighting]]:
    """Create and register one subclass per table row; return them by class name."""
    classes: dict[str, type[Weighting]] = {}
    for spec in AGGREGATORS:
        doc = f"{spec.summary}.\n\nTorchJD ``aggregation.{spec.torchjd_name}`` via :class:`AggregatorWeighting`."
        cls = type(spec.torchjd_name, (AggregatorWeighting,), {"spec": spec, "__doc__": doc, "__module__": __name__})
        classes[cls.__name__] = register_weighting(spec.name)(cls)
    for spec in SCALARIZERS:
        doc = f"{spec.summary}.\n\nTorchJD ``scalarization.{spec.torchjd_name}`` via :class:`ScalarizerWeighting`."
        name = spec.class_name or spec.torchjd_name
        cls = type(name, (ScalarizerWeighting,), {"spec": spec, "__doc__": doc, "__module__": __name__})
        classes[cls.__name__] = register_weighting(spec.name)(cls)
    return classes


_CLASSES = _generate()
globals().update(_CLASSES)
__all__ += sorted(_CLASSES)
