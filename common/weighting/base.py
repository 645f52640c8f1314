"""The small interface every loss-weighting or gradient method implements, and the name registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import SettingsError

__all__ = ["Weighting", "GradientWeighting", "WEIGHTINGS", "register_weighting", "get_weighting"]

WEIGHTINGS: dict[str, type[Weighting]] = {}


def register_weighting(name: str) -> Callable[[type[Weighting]], type[Weighting]]:
    """Class decorator adding a weighting method to :data:`WEIGHTINGS` under ``name`` (case-insensitive)."""

    def _register(cls: type[Weighting]) -> type[Weighting]:
        key = name.lower()
        if key in WEIGHTINGS and WEIGHTINGS[key] is not cls:
            raise ValueError(f"name '{name}' is already registered for {WEIGHTINGS[key].__name__}.")
        WEIGHTINGS[key] = cls
        return cls

    return _register


def get_weighting(name: str, task_names: Sequence[str], **kwargs) -> Weighting:
    """Instantiate the weighting method registered as ``name`` for the given tasks."""
    key = str(name).lower()
    if key not in WEIGHTINGS:
        raise SettingsError(f"weighting name must be one of {sorted(WEIGHTINGS)}, got '{name}'.")
    return WEIGHTINGS[key](task_names=task_names, **kwargs)


class Weighting(nn.Module, ABC):
    """Turns a dict of per-task losses into parameter gradients.

    A weighting method is an ``nn.Module`` so that learnable weights (e.g. UW's log-variances) and running state
    (e.g. DWA's loss history) are saved in checkpoints with ``state_dict()`` and restored on resume. Learnable
    parameters of a method are trained by the main optimiser: pass ``weighting.parameters()`` to it.

    Args:
        task_names: names of all tasks the method may see, in a fixed order.

    Contract of :meth:`backward`:
        - ``losses`` holds scalar losses for the tasks that have at least one labelled sample in the batch;
          it may be a strict subset of ``task_names`` (missing labels), never empty.
        - it must leave ``.grad`` set on every parameter the losses depend on (it calls ``backward`` itself),
          it must not call ``optimizer.step()``;
        - gradient methods change only the gradients of ``shared_params``; task-specific parameters get the
          gradient of their own task's loss;
        - it returns the effective weight of each task in ``losses`` (plain floats) for logging.
    """

    #: True for methods that need one backward pass per task (PCGrad, CAGrad, ...).
    needs_task_gradients: bool = False
    #: True for methods whose gradients scale with a common factor on all losses (fp16 loss scaling is exact).
    loss_scale_equivariant: bool = False

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = list(task_names)
        if len(names) == 0:
            raise ValueError("task_names must name at least one task.")
        if len(set(names)) != len(names):
            raise ValueError(f"task_names must be unique, got {names}.")
        self.task_names = names

    def check_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` for an empty dict or an unknown task name."""
        if not losses:
            raise ValueError("losses must hold at least one task loss.")
        unknown = [k for k in losses if k not in self.task_names]
        if unknown:
            raise ValueError(f"losses has unknown tasks {unknown}; known tasks: {self.task_names}.")

    @abstractmethod
    def backward(self, losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]) -> dict[str, float]:
        """Backpropagate the combined objective; return each present task's effective weight."""

    def attach(self, network: nn.Module) -> None:
        """Called by the trainer once with the (unwrapped) network before training; methods that hook the
        network's modules (TorchJD's autogram engine) do it here. Default: nothing."""

    def on_epoch_end(self) -> None:
        """Called by the trainer once per finished epoch, before the next one starts (DWA rolls its loss history)."""


class GradientWeighting(Weighting):
    """Base of methods that combine per-task gradients of the shared parameters (one backward per task)."""

    needs_task_gradients = True

    @staticmethod
    def task_gradients(
        losses: dict[str, torch.Tensor], shared_params: Sequence[nn.Parameter]
    ) -> tuple[list[str], torch.Tensor]:
        """Backward each task loss once; return task names and the (T, P) matrix of flat shared gradients.

        Task-specific parameters accumulate their own task's gradient in ``.grad`` as in a plain backward;
        shared parameters' ``.grad`` is left as ``None`` for :meth:`set_shared_gradient` to fill.
        """
        params = [p for p in shared_params if p.requires_grad]
        names = list(losses)
        rows = []
        for i, name in enumerate(names):
            for p in params:
                p.grad = None
            losses[name].backward(retain_graph=i < len(names) - 1)
            rows.append(
                torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            )
        for p in params:
            p.grad = None
        return names, torch.stack(rows)

    @staticmethod
    def set_shared_gradient(grad: torch.Tensor, shared_params: Sequence[nn.Parameter]) -> None:
        """Write the flat combined gradient ``grad`` back into the shared parameters' ``.grad``."""
        offset = 0
        for p in (p for p in shared_params if p.requires_grad):
            n = p.numel()
            p.grad = grad[offset : offset + n].view_as(p).clone()
            offset += n
        if offset != grad.numel():
            raise ValueError(f"grad has {grad.numel()} elements, shared parameters {offset}.")
