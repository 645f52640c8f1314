"""Fine-tuning with a frozen encoder for the first epochs: the heads adapt to a pretrained encoder first."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from torch import nn

from ..networks.param_groups import encoder_of

__all__ = ["FreezeEncoder"]

logger = logging.getLogger(__name__)


class FreezeEncoder:
    """Keeps the encoder's parameters frozen (``requires_grad`` False) during the first ``epochs`` epochs of a
    trainer, trainable afterwards (also when a run resumes after them) and when training ends.

    The optimiser must hold the encoder's parameters from the start (see
    :func:`~common.networks.encoder_param_groups`): frozen parameters get no gradient, so the optimiser leaves them
    unchanged, and trains them once they are unfrozen. Only parameters trainable when the handler is made are
    unfrozen. Normalisation statistics (batch norm running means) still follow the data while frozen.

    Args:
        network: the network (a DDP wrapper is looked through).
        epochs: number of epochs the encoder stays frozen (0: never).
        encoder: name of the encoder submodule.
    """

    def __init__(self, network: nn.Module, epochs: int, encoder: str = "encoder") -> None:
        if int(epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}.")
        self.epochs = int(epochs)
        self.encoder = encoder
        self.params = [p for p in encoder_of(network, encoder).parameters() if p.requires_grad]
        self.frozen: bool | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.set_frozen(False, None))

    def set_frozen(self, frozen: bool, epoch: int | None) -> None:
        """Freeze or unfreeze the encoder; log a change."""
        if frozen == self.frozen:
            return
        for p in self.params:
            p.requires_grad_(not frozen)
            if frozen:
                p.grad = None
        if epoch is not None:
            what = f"frozen for epochs 1-{self.epochs}" if frozen else "trainable"
            logger.info(f"epoch {epoch}: encoder '{self.encoder}' ({len(self.params)} tensors) {what}")
        self.frozen = frozen

    def __call__(self, engine: Engine) -> None:
        self.set_frozen(engine.state.epoch <= self.epochs, engine.state.epoch)
