"""Checkpoints written atomically: an interrupted save never destroys the previous file."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.engines import Workflow
from monai.utils import min_version, optional_import

from ..atomic import atomic_write
from ..model_file import save_model, sidecar_path

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


def network_args(network: torch.nn.Module) -> dict[str, Any] | None:
    """The construction arguments a network recorded (`SAMSP.network_args`), also behind a DDP wrapper."""
    return getattr(getattr(network, "module", network), "network_args", None)


def all_finite(network: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in network.state_dict().values() if p.is_floating_point())


class BestModelSaver:
    """Attach to the evaluator: saves the network's plain state dict to `path` and its record to the model.json
    beside it (`samsp_monai.model_file`) whenever the key metric improves. The record's `network_args` and
    `settings` (the config's settings that change pixels) let inference rebuild the network and feed it as trained.

    A non-finite metric or a network with non-finite weights is never saved. Attached to the trainer too
    (`attach_trainer`), it saves the last epoch's model when no validation ran at all (a data set without
    validation cases), so a run always ends with a model or says why not. Its own `state_dict` (best value,
    epoch, metric name) goes into the resumable training state, so a resumed run only replaces the best model
    with a better one. For retraining a model that is being served (MONAI Label), `score_baseline` first
    validates the loaded weights, so only a better model replaces them, and `keep_previous` copies the file it
    replaces to `<name>.prev.pt` (and its model.json to `<name>.prev.json`) once per run.
    """

    def __init__(
        self,
        path: str | Path,
        network: torch.nn.Module,
        metric_name: str | None = None,
        keep_previous: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.path, self.network, self.metric_name = Path(path), network, metric_name
        self.settings = settings
        self.previous_path = self.path.with_suffix(".prev.pt") if keep_previous else None
        self.best_metric, self.best_epoch = -float("inf"), -1
        self.validated, self.saved_unvalidated_epoch = False, -1
        self._scoring_baseline = False

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.STARTED, self.share_best)
        engine.add_event_handler(Events.COMPLETED, self)

    def share_best(self, engine: Workflow) -> None:
        """Hand the run's best so far (restored on resume) to the evaluator, whose own record MONAI keeps per
        process: its "best value ... at epoch" line then names the run's best, not the best since the resume."""
        if self.best_epoch >= 0:
            engine.state.best_metric, engine.state.best_metric_epoch = self.best_metric, self.best_epoch

    def attach_trainer(self, trainer: Workflow, val_cases: int) -> None:
        """Save the last model at the end of training if no validation ran; say so up front if none can."""
        if val_cases == 0:
            logger.warning(
                "the datalist has no validation cases: no best model can be chosen; the model of the last epoch "
                "will be saved to %s (add a 'validation' list to the datalist to choose the best epoch)",
                self.path,
            )
        trainer.add_event_handler(Events.COMPLETED, self.save_if_unvalidated)

    def __call__(self, engine: Workflow) -> None:
        name = self.metric_name = self.metric_name or engine.state.key_metric_name
        value, epoch = float(engine.state.metrics[name]), engine.state.epoch
        self.validated = True
        if not math.isfinite(value) or not all_finite(self.network):
            logger.warning("validation %s=%s at epoch %d, or non-finite weights: model not saved", name, value, epoch)
        elif self._scoring_baseline:
            self.best_metric, self.best_epoch = value, 0
            logger.info("model before training: %s=%.4f; only a better one replaces %s", name, value, self.path)
        elif value > self.best_metric:
            self.best_metric, self.best_epoch = value, epoch
            self._save({"epoch": epoch, "metric_name": name, "metric_value": value})
            if is_writer():  # the other ranks write nothing, so they do not say so
                logger.info("saved best model (%s=%.4f, epoch %d) to %s", name, value, epoch, self.path)

    def save_if_unvalidated(self, trainer: Workflow) -> None:
        if self.validated or self.best_epoch >= 0 or not all_finite(self.network):
            return
        self.saved_unvalidated_epoch = trainer.state.epoch
        self._save({"epoch": trainer.state.epoch, "metric_name": None, "metric_value": None})

    def _save(self, details: Mapping[str, Any]) -> None:
        """model.pt and model.json to `path` (rank 0 only), keeping the replaced pair if asked."""
        if not is_writer():
            return
        if self.previous_path is not None and self.path.exists():
            shutil.copy2(self.path, self.previous_path)
            if sidecar_path(self.path).exists():
                shutil.copy2(sidecar_path(self.path), sidecar_path(self.previous_path))
            logger.info("kept the replaced model as %s", self.previous_path)
            self.previous_path = None
        network = getattr(self.network, "module", self.network)  # the zoo's plain keys, without DDP's `module.`
        save_model(self.path, network.state_dict(), network_args(network), self.settings, details)

    def score_baseline(self, evaluator: Workflow) -> None:
        """Validate the network as it is now (e.g. the served model, loaded at trainer start) and make its score
        the one to beat; nothing is saved."""
        self._scoring_baseline = True
        try:
            evaluator.run()
        finally:
            self._scoring_baseline = False

    def attach_baseline(self, trainer: Workflow, evaluator: Workflow) -> None:
        """Score the baseline when `trainer` starts, after handlers attached before this (checkpoint loaders)."""
        trainer.add_event_handler(Events.STARTED, lambda _: self.score_baseline(evaluator))

    def report(self, state_path: str | Path | None = None) -> str:
        """The line a finished run ends with: what it achieved and what was written where."""
        if self.best_epoch >= 0:
            line = f"best validation {self.metric_name}: {self.best_metric:.4f} at epoch {self.best_epoch}"
            line += f" (model: {self.path})"
        elif self.saved_unvalidated_epoch >= 0:
            epoch = self.saved_unvalidated_epoch
            line = f"no validation ran: saved the model of the last epoch ({epoch}) to {self.path}"
        else:
            line = f"no model written to {self.path}: validation {self.metric_name or 'metric'} was never finite"
        if state_path is not None:
            line += f"; resumable training state: {state_path}"
        if self.best_epoch >= 0 and round(self.best_metric, 4) <= 0:
            line += "\n" + NOTHING_LEARNED_HINT
        print(line, flush=True)
        return line

    def state_dict(self) -> dict[str, float | int | str | None]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "metric_name": self.metric_name}

    def load_state_dict(self, state: Mapping[str, float | int | str | None]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        self.metric_name = self.metric_name or state.get("metric_name")


NOTHING_LEARNED_HINT = (
    "the best model predicts nothing on the validation cases (score 0.0000): it outputs background everywhere, so "
    "every pass-1 mask is empty and self-prompting has no box to start from. Try: more epochs (--max_epochs); "
    "--ce_weight 1.0 (cross-entropy learns faster from scratch, as the demo does); a higher --fg_fraction (more "
    "slices with foreground); from random weights, --gt_box_prob 1.0 --gt_box_anneal_epochs N to teach the box "
    "prompt first; and check that --num_classes and --modality match the labels and images"
)


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
