"""Progress lines with a time estimate: one line per training epoch, one per inference or evaluation case.

A long run that prints nothing for minutes looks hung, and one that prints a line per iteration buries what matters.
`EpochProgress` (trainer) prints one line per epoch: loss, validation score, best so far, time per epoch and what is
left. `CaseProgress` (inference/evaluation evaluator) prints one line per case with the time left. The estimate is
the mean time per step of this process so far times the steps left (a resumed run counts only its own epochs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")


def format_duration(seconds: float) -> str:
    """`42 s`, `4 min 05 s`, `2 h 03 min`: precise enough to plan by, short enough to scan."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def time_left(elapsed: float, done: int, total: int) -> str:
    """'about X left' from the mean time of the `done` steps so far, or 'done' when nothing is left."""
    if done >= total:
        return "done"
    left = elapsed / max(done, 1) * (total - done)
    return f"about {format_duration(left)} left" if left >= 1 else "less than 1 s left"


class EpochProgress:
    """Trainer handler: one line per epoch with the mean loss, the validation score, the best so far and an ETA.

    Attach it after the `ValidationHandler` (list it after it in the handlers), so the epoch's validation has run.
    `validator` is the validation evaluator (None without validation); `empty_share_key` names the trainer metric
    `EmptyPromptShare` publishes, shown when present.
    """

    def __init__(
        self, validator: Any | None = None, loss_key: str = "loss", empty_share_key: str = "train_empty_y0_share"
    ) -> None:
        self.validator, self.loss_key, self.empty_share_key = validator, loss_key, empty_share_key
        self.started, self.first_epoch, self.losses = 0.0, 0, []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def start(self, engine: Engine) -> None:
        self.started, self.first_epoch = time.monotonic(), engine.state.epoch  # epoch > 0 when resumed

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0].get(self.loss_key) if isinstance(output, list) else output.get(self.loss_key)
        if loss is not None:
            self.losses.append(float(loss))

    def report(self, engine: Engine) -> None:
        state = engine.state
        done = state.epoch - self.first_epoch
        elapsed = time.monotonic() - self.started
        parts = [f"epoch {state.epoch}/{state.max_epochs}"]
        if self.losses:
            parts.append(f"loss {sum(self.losses) / len(self.losses):.4f}")
        self.losses = []
        parts += self._validation()
        if self.empty_share_key in state.metrics:
            parts.append(f"empty pass-1 masks {100 * state.metrics[self.empty_share_key]:.0f}%")
        parts.append(f"{format_duration(elapsed / max(done, 1))}/epoch")
        parts.append(time_left(elapsed, done, state.max_epochs - self.first_epoch))
        print(", ".join(parts), flush=True)

    def _validation(self) -> list[str]:
        validator = self.validator
        metrics: Mapping[str, float] = getattr(getattr(validator, "state", None), "metrics", None) or {}
        name = getattr(validator, "state", None) and validator.state.key_metric_name
        if not name or name not in metrics:
            return []
        best, best_epoch = validator.state.best_metric, validator.state.best_metric_epoch
        line = f"{name} {metrics[name]:.4f}"
        if isinstance(best, float) and math.isfinite(best) and best_epoch >= 0:
            line += f" (best {best:.4f} at epoch {best_epoch})"
        return [line]


def _case_of(engine: Engine) -> str:
    """The name of the case just processed: the prediction's source file, else the skipped case's name."""
    output = engine.state.output
    item = output[0] if isinstance(output, list) and output else None
    meta = getattr(item.get("pred"), "meta", {}) if isinstance(item, Mapping) else {}
    source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(source, str) and source:
        return Path(source).name
    batch = engine.state.batch
    names = batch.get("samsp_case") if isinstance(batch, Mapping) else None
    return f"{names[0]} (skipped)" if names else "?"


class CaseProgress:
    """Evaluator handler (inference, evaluation): one line per case, `case 3/10 name: 1.2 s, about 8 s left`."""

    def __init__(self) -> None:
        self.started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.report)

    def start(self, engine: Engine) -> None:
        self.started = time.monotonic()

    def report(self, engine: Engine) -> None:
        state = engine.state
        done, total = state.iteration - (state.epoch - 1) * state.epoch_length, state.epoch_length
        elapsed = time.monotonic() - self.started
        print(f"case {done}/{total} {_case_of(engine)}: {time_left(elapsed, done, total)}", flush=True)
