"""Checkpoints written atomically: an interrupted save never destroys the previous file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.engines import Workflow
from monai.utils import min_version, optional_import

from .atomic import atomic_write

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
logger = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through an atomic write: an interrupted save leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save(obj, f))


def is_writer() -> bool:
    """Only rank 0 of a distributed run writes checkpoints: all ranks hold the same weights."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in objects.items()}


class BestModelSaver:
    """Attach to the evaluator: saves `{"model": state_dict}` to `path` whenever the key metric improves.

    Its own `state_dict` (best value and epoch) goes into the resumable training state, so a resumed run
    only replaces the best model with a better one.
    """

    def __init__(self, path: str | Path, network: torch.nn.Module, metric_name: str | None = None) -> None:
        self.path, self.network, self.metric_name = Path(path), network, metric_name
        self.best_metric, self.best_epoch = -float("inf"), -1

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        name = self.metric_name = self.metric_name or engine.state.key_metric_name
        value = float(engine.state.metrics[name])
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, engine.state.epoch
            if is_writer():
                atomic_save({"model": self.network.state_dict(), name: value, "epoch": self.best_epoch}, self.path)
                logger.info("saved best model (%s=%.4f, epoch %d) to %s", name, value, self.best_epoch, self.path)

    def report(self) -> str:
        """The line a finished run ends with, so a user sees at once what the run achieved."""
        line = f"best validation {self.metric_name or 'key metric'}: {self.best_metric:.4f} at epoch {self.best_epoch}"
        print(f"{line} (model: {self.path})", flush=True)
        return line

    def state_dict(self) -> dict[str, float]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])


class TrainingStateSaver:
    """Attach to the trainer: after every epoch, saves the state of `objects` (network, optimizer, trainer,
    best-model tracker, ...) to one file from which `monai.handlers.CheckpointLoader` resumes the run."""

    def __init__(self, path: str | Path, objects: Mapping[str, Any]) -> None:
        self.path, self.objects = Path(path), dict(objects)

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        if is_writer():
            atomic_save(state_dicts(self.objects), self.path)
