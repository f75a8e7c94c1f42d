"""How often training's self-prompt had nothing to prompt with: the share of empty pass-1 masks per epoch."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from torch import nn

logger = logging.getLogger(__name__)


class EmptyPromptShare:
    """Trainer handler: the share of (image, class) pairs whose pass-1 mask y0 was empty, per epoch.

    With `empty_box_train: keep_previous` those samples never reach the box-prompted pass, so this share says
    how much of an epoch trained pass 1 directly without distillation. It is put into the trainer's
    `engine.state.metrics` as `metric_name` before the epoch's StatsHandler and MLflow handler run (list this
    handler before them), so it is printed in the epoch's progress line and logged to MLflow at step = epoch.
    """

    def __init__(self, network: nn.Module, metric_name: str = "train_empty_y0_share") -> None:
        self.network = getattr(network, "module", network)  # DistributedDataParallel wraps the network
        self.metric_name = metric_name
        self.empty, self.total = torch.zeros(()), 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine) -> None:
        self.empty, self.total = torch.zeros(()), 0

    def collect(self, engine: Engine) -> None:
        flags = getattr(self.network, "empty_prompts", None)  # None also for other networks (e.g. the UNet baseline)
        if flags is not None:
            self.empty = self.empty.to(flags.device) + flags.sum()  # stays on the device until the epoch ends
            self.total += flags.numel()
            self.network.empty_prompts = None

    def publish(self, engine: Engine) -> None:
        if not self.total:
            return
        share = float(self.empty) / self.total
        engine.state.metrics[self.metric_name] = share
        logger.debug(
            "epoch %d: %.1f%% of pass-1 masks were empty (%d of %d image-class pairs; training rule %s)",
            engine.state.epoch,
            100 * share,
            int(self.empty),
            self.total,
            self.network.empty_box_train,
        )
