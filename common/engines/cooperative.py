"""Cooperative multi-task training after MT-CooL: tasks updated in turn, each seeking a flat minimum (SAM-style)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from monai.utils import CommonKeys as Keys
from torch import nn

from ..errors import SettingsError
from ..weighting import EqualWeighting, Weighting
from .trainer import MultiTaskTrainer

__all__ = ["CooperativeTrainer"]

PERTURB_TARGETS = ("features", "parameters")
_TINY = 1e-12


def _feature_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of an encoder output: a tensor, or a list/tuple of tensors (e.g. U-Net skips)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)) and output and all(isinstance(t, torch.Tensor) for t in output):
        return list(output)
    raise ValueError(
        f"network.encoder must return a tensor or a list/tuple of tensors for perturb='features', "
        f"got {type(output).__name__}."
    )


def _feature_perturbation(
    features: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], rho: float
) -> list[torch.Tensor | None]:
    """Per-sample ascent step on one encoder call's features: ``eps_b = rho * |F_b| * g_b / |g_b|``.

    Norms are taken per sample over every feature tensor the loss depends on (tensors without a gradient are not
    perturbed); a sample without gradient (no known label) is not perturbed.
    """
    used = [(f, g) for f, g in zip(features, grads) if g is not None]
    if not used:
        return [None] * len(features)
    b = used[0][0].shape[0]
    if any(f.dim() == 0 or f.shape[0] != b for f, _ in used):
        raise ValueError("network.encoder outputs must share the batch size in dim 0 for perturb='features'.")
    g_norm = torch.sqrt(sum(g.detach().float().reshape(b, -1).pow(2).sum(1) for _, g in used))
    f_norm = torch.sqrt(sum(f.detach().float().reshape(b, -1).pow(2).sum(1) for f, _ in used))
    scale = rho * f_norm / (g_norm + _TINY)
    return [
        None if g is None else (g.float() * scale.view(b, *[1] * (g.dim() - 1))).to(g.dtype)
        for g in grads
    ]


class CooperativeTrainer(MultiTaskTrainer):
    """Multi-task training as multi-level optimisation with flat minima, after MT-CooL (Wu et al., MICCAI 2023,
    arXiv 2309.12090; IEEE TMI 44(4) 2025).

    Each iteration updates the sub-model of every active task in turn (the order of the loss's tasks), on the same
    batch: a fresh forward pass (so each update sees the parameters already changed by the previous tasks'
    updates), that task's loss alone (no loss weighting), then an optimiser step. With ``rho > 0`` the update seeks
    a flat minimum with respect to the other tasks' features, SAM-style: an ascent step of radius ``rho`` on the
    perturbed quantity (first-order, ``eps = rho * g / |g|``), the task's gradient computed at that perturbed point,
    the perturbation removed, then the step. ``rho=0`` is plain alternating updates.

    What follows MT-CooL (as far as its published abstracts state it): multi/bi-level formulation solved by
    alternating per-task updates, each task exploiting the current sub-models of the others; flat minima of each
    sub-problem with respect to the features coming from the other tasks, so that a sub-model is robust to the
    others' changes. Simplifications (the paper's full method could not be checked): (1) networks here share one
    ``encoder`` (hard parameter sharing) instead of the paper's per-task sub-models, each of which uses the other
    tasks' features, so a task's sub-model is the shared encoder plus its head, "the other tasks' features" are the
    shared encoder outputs (which the other tasks' updates also move), and the encoder takes one step per active
    task per batch; (2) no hypergradient through the lower-level
    problems: one first-order step per task; (3) with ``perturb="features"`` the radius is relative, per sample:
    ``|eps_b| = rho * |F_b|`` over all encoder outputs the task uses; ``perturb="parameters"`` instead perturbs
    the shared parameters by an absolute radius ``rho`` (global norm, as in SAM); (4) fixed task order.

    Cost: two forward/backward passes per active task (one with ``rho=0``). During a task's passes the other
    tasks' ``inactive_task_kwargs`` apply (e.g. ``{"seg": {"segment": False}}`` skips the decoder in the
    classification pass). Every forward pass updates BatchNorm running statistics. Under DDP gradients are
    averaged by hand after each task's backward, and a rank without labels for a task still takes part with a
    zero loss. ``state.output`` holds ``pred`` (each task's output from its own pass), ``task_losses`` (each
    task's loss before its own update), ``task_weights`` (1.0) and ``loss`` (their sum).

    Args:
        rho: perturbation radius (>= 0; relative for ``"features"``, absolute for ``"parameters"``).
        perturb: ``"features"`` (outputs of ``network.encoder``) or ``"parameters"`` (the network's
            ``shared_parameters()``).
        weighting: None or equal weighting (``"ew"``); each task's loss is minimised alone, so other methods are
            refused rather than ignored.
        args, kwargs: the arguments of :class:`MultiTaskTrainer` (``phases``, ``inactive_task_kwargs``, ...).
    """

    def __init__(
        self,
        *args: Any,
        rho: float = 0.05,
        perturb: str = "features",
        weighting: Weighting | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            value = float(rho)
        except (TypeError, ValueError):
            value = float("nan")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}.")
        if perturb not in PERTURB_TARGETS:
            raise ValueError(f"perturb must be one of {PERTURB_TARGETS}, got '{perturb}'.")
        if weighting is None:
            loss_function = kwargs.get("loss_function", args[5] if len(args) > 5 else None)
            task_names = getattr(loss_function, "task_names", None)
            if not task_names:
                raise ValueError("weighting must be given where loss_function has no task_names.")
            weighting = EqualWeighting(task_names)
        elif type(weighting) is not EqualWeighting:
            raise ValueError(
                f"weighting must be None or equal weighting ('ew'): CooperativeTrainer minimises each task's loss "
                f"alone; got {type(weighting).__name__}."
            )
        super().__init__(*args, weighting=weighting, **kwargs)
        if self.grad_scaler is not None:
            raise SettingsError("precision 'fp16' (loss scaling) is not supported by cooperative training; use 'bf16'.")
        self.rho, self.perturb = value, perturb
        if perturb == "features" and not isinstance(getattr(self._core_network(), "encoder", None), nn.Module):
            raise ValueError(
                f"network must have an 'encoder' module (like MultiTaskNet) for perturb='features', "
                f"got {type(self._core_network()).__name__}."
            )
        if perturb == "parameters" and not self.shared_parameters():
            raise ValueError("network has no trainable shared parameters to perturb for perturb='parameters'.")

    def _iteration(self, engine: CooperativeTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        preds: dict[str, Any] = {}
        losses: dict[str, float] = {}
        for task in self.active_tasks:
            task_kwargs = dict(kwargs)
            for other, off in self.inactive_task_kwargs.items():
                if other != task:
                    task_kwargs.update(off)
            task_preds, loss = self._update_task(task, inputs, targets, args, task_kwargs)
            preds.update({k: v for k, v in task_preds.items() if k not in preds or k == task})
            if loss is not None:
                losses[task] = loss
        engine.state.output[Keys.PRED] = preds
        engine.state.output[Keys.LOSS] = torch.tensor(sum(losses.values()))
        engine.state.output["task_losses"] = losses
        engine.state.output["task_weights"] = {k: 1.0 for k in losses}
        return engine.state.output

    def _update_task(
        self, task: str, inputs: Any, targets: dict[str, Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], float | None]:
        """One update of ``task``'s sub-model; returns its (detached) outputs and its loss before the update."""
        net = self.network
        ddp = isinstance(net, nn.parallel.DistributedDataParallel)

        def forward() -> tuple[dict[str, Any], torch.Tensor | None]:
            out = self.forward(inputs, *args, **kwargs)
            return out, self.loss_function(out, targets, tasks=[task]).get(task)

        self.optimizer.zero_grad(set_to_none=True)
        with net.no_sync() if ddp else nullcontext():
            recorded: list[list[torch.Tensor]] = []
            record = self.rho > 0 and self.perturb == "features"
            with self._encoder_hook(lambda m, i, o: recorded.append(_feature_tensors(o))) if record else nullcontext():
                preds, loss = forward()
            detached = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in preds.items()}
            if not self._on_any_rank(loss is not None, ddp):
                return detached, None
            value = None if loss is None else float(loss.detach())
            if loss is None:  # labels on other ranks only: a zero loss keeps this rank in step with theirs
                loss = preds[task].sum() * 0.0
            if self.rho == 0:
                loss.backward()
            elif self.perturb == "features":
                self._descend_at_perturbed_features(task, loss, recorded, forward)
            else:
                self._descend_at_perturbed_parameters(task, loss, preds, forward)
        if ddp:
            self._average_gradients()
        self.optimizer.step()
        return detached, value

    def _descend_at_perturbed_features(
        self, task: str, loss: torch.Tensor, recorded: list[list[torch.Tensor]], forward: Callable
    ) -> None:
        """Backward ``task``'s loss with every recorded encoder output moved by its ascent step."""
        flat = [t for call in recorded for t in call]
        wanted = [t for t in flat if t.requires_grad]
        found = iter(torch.autograd.grad(loss, wanted, allow_unused=True)) if wanted else iter(())
        grads = [next(found) if t.requires_grad else None for t in flat]
        steps, offset = [], 0
        for call in recorded:
            steps.append(_feature_perturbation(call, grads[offset : offset + len(call)], self.rho))
            offset += len(call)
        pending = iter(steps)

        def add_step(module: nn.Module, inputs: Any, output: Any) -> Any:
            step = next(pending, None)
            if step is None:
                raise RuntimeError("network.encoder ran more often in the perturbed pass than in the first one.")
            moved = [t if e is None else t + e for t, e in zip(_feature_tensors(output), step)]
            return moved[0] if isinstance(output, torch.Tensor) else type(output)(moved)

        with self._encoder_hook(add_step):
            preds, perturbed = forward()
        (preds[task].sum() * 0.0 if perturbed is None else perturbed).backward()

    def _descend_at_perturbed_parameters(
        self, task: str, loss: torch.Tensor, preds: dict[str, Any], forward: Callable
    ) -> None:
        """Backward ``task``'s loss at ``shared + eps``; the shared parameters are restored exactly afterwards."""
        params = self.shared_parameters()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        norm = torch.sqrt(sum(g.detach().float().pow(2).sum() for _, g in used)) if used else torch.tensor(0.0)
        saved = [p.detach().clone() for p, _ in used]
        try:
            with torch.no_grad():
                for p, g in used:
                    p.add_((g.float() * (self.rho / (float(norm) + _TINY))).to(p.dtype))
            preds, perturbed = forward()
            (preds[task].sum() * 0.0 if perturbed is None else perturbed).backward()
        finally:
            with torch.no_grad():
                for (p, _), original in zip(used, saved):
                    p.copy_(original)

    @contextmanager
    def _encoder_hook(self, hook: Callable) -> Iterator[None]:
        handle = self._core_network().encoder.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _on_any_rank(self, flag: bool, ddp: bool) -> bool:
        if not ddp:
            return flag
        t = torch.tensor([float(flag)], device=next(self.network.parameters()).device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _average_gradients(self) -> None:
        """Average the gradients of the parameters that have one on any rank (others keep ``grad=None``)."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        device = params[0].device if params else "cpu"
        has = torch.tensor([float(p.grad is not None) for p in params], device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        world = dist.get_world_size()
        for p, h in zip(params, has.tolist()):
            if h > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world
