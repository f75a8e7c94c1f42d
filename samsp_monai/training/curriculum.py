"""Training schedule of the ground-truth box prompts that teach SAM-SP's prompt path what a box means."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from ..errors import SAMSPError

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

logger = logging.getLogger(__name__)


class GtBoxSchedule:
    """Sets the network's `gt_box_prob` (and `gt_box_jitter`) at the start of each training epoch.

    `prob` is the value at epoch 1; with `anneal_epochs > 0` it falls linearly and reaches 0 at epoch
    `anneal_epochs + 1` (with `anneal_epochs = max_epochs` the last epoch trains with `prob / max_epochs`),
    so the prompt path first learns from good boxes and then from the network's own; 0 keeps it constant.
    A DDP-wrapped network is unwrapped.
    """

    def __init__(self, network: nn.Module, prob: float, jitter: float = 0.1, anneal_epochs: int = 0) -> None:
        if not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise SAMSPError(f"config key 'gt_box_prob' must be a number in [0, 1], got {prob!r}")
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise SAMSPError(f"config key 'gt_box_anneal_epochs' must be an integer >= 0, got {anneal_epochs!r}")
        self.network = getattr(network, "module", network)
        if not hasattr(self.network, "gt_box_prob"):
            raise SAMSPError(f"gt_box_prob > 0 needs a SAMSP network, not {type(self.network).__name__}: set it to 0")
        self.prob, self.jitter, self.anneal_epochs = float(prob), float(jitter), anneal_epochs

    def value(self, epoch: int) -> float:
        """gt_box_prob for a 1-based epoch."""
        if not self.anneal_epochs:
            return self.prob
        return self.prob * max(0.0, 1.0 - (epoch - 1) / self.anneal_epochs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.network.gt_box_prob = self.value(engine.state.epoch)
        self.network.gt_box_jitter = self.jitter
        logger.info(
            "epoch %d: gt_box_prob %.3f, gt_box_jitter %.3f",
            engine.state.epoch,
            self.value(engine.state.epoch),
            self.jitter,
        )
