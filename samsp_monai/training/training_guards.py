"""Ignite handlers that keep a training run sane: stop on a non-finite loss, keep the cosine schedule's horizon,
let a user error reach the command line as one short message, and turn Ctrl-C into one line saying how to resume.

- `StopOnNonFiniteLoss`: a NaN/Inf loss means the next optimizer step ruins the weights. Stopping at once with the
  epoch and iteration named keeps the last finite training state and best model on disk, and the run exits non-zero.
- `CosineHorizon`: a resumed run restores the scheduler's state, including its old `T_max`. Raised `--max_epochs`
  then trains its extra epochs at the end of the old curve (learning rate 0). This sets `T_max` to the trainer's
  `max_epochs` and the learning rate to the cosine's value at the current epoch, as if the run had been planned that
  long from the start.
- `run_training`: Ctrl-C would print two long `KeyboardInterrupt` tracebacks; the training state of the last
  finished epoch is already on disk, so the user needs only that epoch and the fact that a rerun resumes.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any, Protocol

from monai.engines import Workflow
from monai.handlers import from_engine
from monai.utils import IgniteInfo, min_version, optional_import
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from ..errors import SAMSPError

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")


class ShortUserErrors:
    """Re-raise a `SAMSPError` (or Ctrl-C) from inside an engine before MONAI's `StatsHandler` logs its traceback.

    Ignite calls the `EXCEPTION_RAISED` handlers in order and the first one that raises ends the call, so attach
    this before `StatsHandler` (list it first in the handlers). Other errors go on to the next handler, which
    logs and re-raises them; with no next handler they are re-raised here.
    """

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Workflow, error: Exception) -> None:
        handlers = [h for h, _, _ in engine._event_handlers[Events.EXCEPTION_RAISED]]
        if isinstance(error, (SAMSPError, KeyboardInterrupt)) or handlers[-1] is self:
            raise error


class StopOnNonFiniteLoss:
    """Raise a `SAMSPError` naming epoch and iteration as soon as `engine.state.output[loss_key]` is not finite."""

    def __init__(self, loss_key: str = "loss") -> None:
        self.loss_key = loss_key

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        loss = float(from_engine([self.loss_key], first=True)(engine.state.output))
        if not math.isfinite(loss):
            state = engine.state
            iteration = (state.iteration - 1) % state.epoch_length + 1
            raise SAMSPError(
                f"training loss is {loss} at epoch {state.epoch}, iteration {iteration} of {state.epoch_length}: "
                "training stopped, the model and training state of the last finished epoch are kept. Check the "
                "input images for NaN/Inf values, or lower --learning_rate"
            )


class CosineHorizon:
    """At `STARTED` (after the resume loader), stretch a cosine schedule to the trainer's `max_epochs`.

    Other schedulers are left alone: a `LambdaLR` (paper.json's warmup + poly) keeps its factor function out of its
    saved state, so the one built from the current config already spans the current `max_epochs`.
    """

    def __init__(self, lr_scheduler: LRScheduler) -> None:
        self.lr_scheduler = lr_scheduler

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Workflow) -> None:
        scheduler, horizon = self.lr_scheduler, engine.state.max_epochs
        if not isinstance(scheduler, CosineAnnealingLR) or scheduler.T_max == horizon:
            return
        scheduler.T_max, epoch = horizon, scheduler.last_epoch
        progress = (1 + math.cos(math.pi * epoch / horizon)) / 2
        for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * progress


class TrainingInterrupted(SAMSPError):
    """Ctrl-C during training; the message says which epoch's state is saved and how to resume."""


class _Releasable(Protocol):
    def finish(self) -> None: ...


def run_training(trainer: Workflow, training_run: _Releasable | None = None) -> None:
    """`trainer.run()`, with Ctrl-C turned into `TrainingInterrupted` naming the last epoch whose state was saved.

    Call it after the training-state saver is attached: the epoch counted here is recorded after the saver's
    handler, so "after epoch N" is the state a rerun resumes from. The run's lock is released on the way out.
    """
    saved, interrupted = {"epoch": 0}, threading.Event()

    def record(engine: Workflow) -> None:
        saved["epoch"] = engine.state.epoch

    def on_ctrl_c(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    def stop_if_interrupted(engine: Workflow) -> None:
        # Ctrl-C raised inside a finalizer (a __del__, a weakref callback) is ignored by Python: the flag still
        # stops the run at the next iteration instead of training on.
        if interrupted.is_set():
            raise KeyboardInterrupt

    trainer.add_event_handler(Events.STARTED, record)  # a resumed run starts from its restored epoch
    trainer.add_event_handler(Events.EPOCH_COMPLETED, record)
    trainer.add_event_handler(Events.ITERATION_STARTED, stop_if_interrupted)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_ctrl_c) if main_thread else None
    try:
        trainer.run()
    except KeyboardInterrupt:
        if training_run is not None:
            training_run.finish()
        raise TrainingInterrupted(
            f"interrupted after epoch {saved['epoch']}; rerun the same command to resume"
        ) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
