"""MONAI SupervisedTrainer for multi-task networks: per-task losses combined by a weighting method."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn

from ..errors import SettingsError
from ..networks.parallel import unwrap_parallel
from ..weighting import Weighting
from .precision import ForwardSettings

__all__ = ["MultiTaskTrainer", "active_tasks_for_epoch"]

logger = logging.getLogger(__name__)


def active_tasks_for_epoch(phases: Sequence[Mapping[str, Any]], epoch: int) -> list[str]:
    """Tasks trained in 1-based ``epoch`` under a schedule of ``{"epochs": n, "tasks": [...]}`` phases.

    Epochs past the last phase keep the last phase's tasks.
    """
    if not phases:
        raise ValueError("phases must hold at least one phase.")
    end = 0
    for phase in phases:
        end += int(phase["epochs"])
        if epoch <= end:
            return list(phase["tasks"])
    return list(phases[-1]["tasks"])


class MultiTaskTrainer(SupervisedTrainer):
    """Trains a network returning ``{task: output}`` with a :class:`MultiTaskLoss` and a :class:`Weighting`.

    Each iteration: forward, per-task losses of the active tasks with known labels, ``weighting.backward`` (one or
    several backward passes; gradient methods touch the shared parameters only), optimiser step. The iteration
    output holds ``loss`` (the weighted sum), ``task_losses`` and ``task_weights`` (floats) for the handlers.

    Args:
        weighting: combines the per-task losses into gradients; its state is checkpointed with the trainer's.
        phases: training schedule, e.g. ``[{"epochs": 5, "tasks": ["mim"]}, {"epochs": 5, "tasks": ["cls"]}]``
            for pre-training then fine-tuning; default: every task of the loss in every epoch.
        inactive_task_kwargs: task -> network keyword arguments to use while that task is inactive (e.g.
            ``{"mim": {"mim_mask": None}}`` skips the masked pass when MIM is not trained).
        precision: forward pass in "fp32", "bf16" (autocast; CPU or CUDA) or "fp16" (CUDA, with a GradScaler; only
            for weightings whose gradients scale with the losses, see ``Weighting.loss_scale_equivariant``).
            Predictions are cast to float32 before the losses; parameters and gradients stay float32.
        memory_format: "contiguous" or "channels_last" (2-D networks: 4-D inputs and convolution weights).
        kwargs: the arguments of ``monai.engines.SupervisedTrainer``; ``decollate`` defaults to False.
    """

    def __init__(
        self,
        *args: Any,
        weighting: Weighting,
        phases: Sequence[Mapping[str, Any]] | None = None,
        inactive_task_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        precision: str = "fp32",
        memory_format: str = "contiguous",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
        if not isinstance(weighting, Weighting):
            raise ValueError(f"weighting must be a common.weighting.Weighting, got {type(weighting).__name__}.")
        self.weighting = weighting
        weighting.attach(self._core_network())  # e.g. TorchJD's autogram engine hooks the shared modules
        task_names = list(getattr(self.loss_function, "task_names", weighting.task_names))
        self.phases = list(phases) if phases else [{"epochs": 1, "tasks": task_names}]
        for i, phase in enumerate(self.phases):
            unknown = [t for t in phase.get("tasks", []) if t not in task_names]
            if unknown or not phase.get("tasks"):
                raise ValueError(f"phases[{i}] must name tasks among {task_names}, got {phase.get('tasks')}.")
            if int(phase.get("epochs", 0)) < 1:
                raise ValueError(f"phases[{i}]['epochs'] must be >= 1, got {phase.get('epochs')}.")
        self.inactive_task_kwargs = {k: dict(v) for k, v in (inactive_task_kwargs or {}).items()}
        self.active_tasks: list[str] = active_tasks_for_epoch(self.phases, 1)
        self.forward_settings = ForwardSettings(precision, memory_format, self.state.device or "cpu")
        self.forward_settings.prepare_network(self._core_network())
        self.grad_scaler: torch.amp.GradScaler | None = None
        if self.forward_settings.precision == "fp16":
            if not weighting.loss_scale_equivariant:
                raise SettingsError(
                    f"precision 'fp16' scales the losses (GradScaler), which changes the result of weighting "
                    f"{type(weighting).__name__}; use precision 'bf16' or 'fp32', or a loss-scale-equivariant "
                    "weighting ('ew', 'pcgrad')."
                )
            self.grad_scaler = torch.amp.GradScaler("cuda")
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)

    def run(self) -> None:  # type: ignore[override]
        """Train; refuses to run with an empty data loader, which MONAI would skip silently."""
        try:
            n_batches = len(self.data_loader)
        except TypeError:  # an iterable without length
            n_batches = None
        if n_batches == 0:
            sampler = getattr(self.data_loader, "sampler", None)
            n_samples = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else "too few"
            raise ValueError(
                f"the training data loader yields no batch: {n_samples} training samples (on this rank) for "
                f"batch_size {getattr(self.data_loader, 'batch_size', '?')} with drop_last; use more training "
                "cases or a smaller --batch_size."
            )
        super().run()

    def _start_epoch(self, engine: MultiTaskTrainer) -> None:
        # The weighting's epoch roll (DWA's loss history) runs when the next epoch starts, not when one ends:
        # the epoch checkpoint is written at EPOCH_COMPLETED, and a run resumed from it must roll exactly once.
        if engine.state.epoch > 1:
            self.weighting.on_epoch_end()
        self.active_tasks = active_tasks_for_epoch(self.phases, engine.state.epoch)
        rank = f"rank {dist.get_rank()}: " if dist.is_available() and dist.is_initialized() else ""
        logger.info(f"{rank}epoch {engine.state.epoch}: training tasks {self.active_tasks}")

    def _core_network(self) -> nn.Module:
        return unwrap_parallel(self.network)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The network's shared parameters (``shared_parameters()`` if it has one, else all parameters)."""
        core = self._core_network()
        params = core.shared_parameters() if hasattr(core, "shared_parameters") else core.parameters()
        return [p for p in params if p.requires_grad]

    def forward(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """The inferer's predictions under :attr:`forward_settings` (autocast, memory format), as float32."""
        return self.inferer(inputs, self.forward_settings.wrap(self.network), *args, **kwargs)

    def _iteration(self, engine: MultiTaskTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        kwargs = dict(kwargs)
        for task, off in self.inactive_task_kwargs.items():
            if task not in self.active_tasks:
                kwargs.update(off)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)

        ddp = isinstance(engine.network, nn.parallel.DistributedDataParallel)
        manual_sync = ddp and self.weighting.needs_task_gradients
        ctx = engine.network.no_sync() if manual_sync else torch.enable_grad()
        with ctx:
            preds = self.forward(inputs, *args, **kwargs)
            losses = engine.loss_function(preds, targets, tasks=self.active_tasks)
            shared = self.shared_parameters()
            if losses and self.weighting.needs_task_gradients and not shared:
                # nothing shared is trainable (an encoder frozen for fine-tuning): no task gradients to combine,
                # each head gets its own task's gradient
                total_loss = torch.stack(list(losses.values())).sum()
                (self.grad_scaler.scale(total_loss) if self.grad_scaler is not None else total_loss).backward()
                weights = {task: 1.0 for task in losses}
            elif losses and self.grad_scaler is not None:
                scaled = {k: self.grad_scaler.scale(v) for k, v in losses.items()}
                weights = self.weighting.backward(scaled, shared)
            elif losses:
                weights = self.weighting.backward(losses, shared)
            else:
                weights = {}
        if manual_sync:
            world = dist.get_world_size()
            for p in engine.network.parameters():
                if not p.requires_grad:  # frozen on every rank alike: no gradient, so the optimiser skips it
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.weighting.parameters():  # learnable task weights live outside DDP
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        if losses and self.grad_scaler is not None:
            self.grad_scaler.step(engine.optimizer)  # skips the step where a gradient is inf/nan
            self.grad_scaler.update()
        elif losses:
            engine.optimizer.step()
        total = sum(weights.get(k, 1.0) * float(v.detach()) for k, v in losses.items())
        engine.state.output[Keys.PRED] = preds
        engine.state.output[Keys.LOSS] = torch.tensor(total)
        engine.state.output["task_losses"] = {k: float(v.detach()) for k, v in losses.items()}
        engine.state.output["task_weights"] = {k: float(w) for k, w in weights.items()}
        return engine.state.output
