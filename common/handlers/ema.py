"""Exponential moving average (EMA) of a network's weights for validation and the saved model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..networks.parallel import unwrap_parallel

__all__ = ["EMAWeights"]

logger = logging.getLogger(__name__)


class EMAWeights:
    """Keeps an EMA of ``network``'s parameters and buffers (``AveragedModel`` with ``get_ema_multi_avg_fn``).

    Updated after every training iteration. While ``validator`` runs, the network holds the EMA weights (so the
    validation metrics and the best model that the validator's checkpoint saver writes are the EMA model's); the
    training weights are put back when it completes. When training completes the network keeps the EMA weights.
    The handler is checkpointable (``state_dict``/``load_state_dict``): add it to the resume checkpoint's objects.
    With ``decay == 0`` it does nothing and its state is empty.

    Args:
        network: the trained network (or its DistributedDataParallel wrapper).
        decay: EMA decay per iteration in [0, 1); 0 turns EMA off.
        validator: the evaluator that validates during training (None: the EMA is used only at the end).
    """

    def __init__(self, network: nn.Module, decay: float = 0.0, validator: Engine | None = None) -> None:
        try:
            value = float(decay)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"decay must be a number in [0, 1) (0: EMA off), got {decay!r}.")
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch module, got {type(network).__name__}.")
        self.network, self.decay, self.validator = network, value, validator
        self.ema: AveragedModel | None = None
        if self.enabled:
            self.ema = AveragedModel(
                unwrap_parallel(network), multi_avg_fn=get_ema_multi_avg_fn(value), use_buffers=True
            )
        self._saved: dict[str, torch.Tensor] | None = None

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.use_ema)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self.swap_in)
            self.validator.add_event_handler(Events.COMPLETED, self.swap_out)
            self.validator.add_event_handler(Events.EXCEPTION_RAISED, self.swap_out)

    def update(self, engine: Engine | None = None) -> None:
        """Fold the network's current weights into the average."""
        if self.ema is not None:
            self.ema.update_parameters(unwrap_parallel(self.network))

    def _ema_state(self) -> dict[str, torch.Tensor]:
        assert self.ema is not None
        return self.ema.module.state_dict()

    def swap_in(self, engine: Engine | None = None) -> None:
        """Put the EMA weights into the network, keeping the training weights aside."""
        if self.ema is None or self._saved is not None or int(self.ema.n_averaged) == 0:
            return
        core = unwrap_parallel(self.network)
        self._saved = {k: v.detach().clone() for k, v in core.state_dict().items()}
        core.load_state_dict(self._ema_state())

    def swap_out(self, engine: Engine | None = None, *_: Any) -> None:
        """Put the training weights back after :meth:`swap_in`."""
        if self._saved is not None:
            unwrap_parallel(self.network).load_state_dict(self._saved)
            self._saved = None

    def use_ema(self, engine: Engine | None = None) -> None:
        """Leave the EMA weights in the network for good (end of training)."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            self._saved = None
            unwrap_parallel(self.network).load_state_dict(self._ema_state())
            logger.info(f"training complete: the network holds the EMA weights (decay {self.decay}).")

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else self.ema.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self.ema is None:
            return
        if not state_dict:
            logger.warning("the checkpoint holds no EMA weights: the average restarts from the current weights.")
            return
        self.ema.load_state_dict(dict(state_dict))
