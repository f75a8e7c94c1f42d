"""What a training run in a `bundle_root` is: a new run, a resumed one, or a refusal that says why.

Rerunning a training command resumes from `training_state.pt`. That is only right when the settings that shape
training are the ones the state was trained with, so the state carries them (`RunRecord`). `TrainingRun.start`,
the last `initialize` step of `train.json`:
- takes the folder's lock (`training.lock` with host and pid): a second run in the same folder is refused with the
  holder named; the lock of a process that no longer exists on this host is taken over;
- removes temporary files left by a checkpoint write that was killed;
- with `fresh`, moves the previous training state (and a hard link or copy of the best model, which stays in place)
  to `previous/<time>/`, and starts a new run; nothing is deleted;
- otherwise resumes, stating the run id, the epochs done and the settings, or refuses when the settings differ
  (naming each), when the run is already finished, or when the state cannot be read.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import remove_stale_temp_files
from ..errors import SAMSPError
from .checkpoints import is_writer

logger = logging.getLogger(__name__)

# settings that may change between the parts of one run: how long, how often validated, how data is loaded, and
# activation checkpointing (same gradients, less memory)
RESUMABLE_CHANGES = frozenset(
    {"max_epochs", "val_interval", "num_workers", "cache_rate", "sw_batch_size", "encoder_checkpointing", "fresh"}
)
FRESH_HINT = "pass --fresh True to start a new run (the previous state is moved aside), or use another --bundle_root"


def plain(value: Any) -> Any:
    """A JSON-like copy (str, int, float, bool, None, lists, dicts) that `torch.load(weights_only=True)` reads."""
    return json.loads(json.dumps(value, default=str))


def training_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that shape training: all but `RESUMABLE_CHANGES`."""
    return {k: plain(v) for k, v in sorted(settings.items()) if k not in RESUMABLE_CHANGES}


def describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


class RunRecord:
    """Saved in `training_state.pt` beside the network and optimizer: which run it is, its settings, and the
    MLflow run it logs to (`mlflow_run_id`, None without tracking), so that every part of a resumed run logs
    into that one MLflow run."""

    def __init__(self, run_id: str, settings: Mapping[str, Any], mlflow_run_id: str | None = None) -> None:
        self.run_id, self.settings, self.mlflow_run_id = run_id, training_settings(settings), mlflow_run_id

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "settings": self.settings, "mlflow_run_id": self.mlflow_run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Only the ids: `TrainingRun.start` has already compared the settings."""
        self.run_id = str(state["run_id"])
        self.mlflow_run_id = state.get("mlflow_run_id") or self.mlflow_run_id


class FolderLock:
    """An exclusive lock file holding `host pid`; a lock left by a dead process on this host is taken over.

    `purpose` and `hint` word the refusal: what kind of run holds the folder, and what the user can do instead.
    """

    def __init__(
        self,
        path: str | Path,
        purpose: str = "training run",
        hint: str = "wait for it to finish or use another --bundle_root",
    ) -> None:
        self.path, self.held, self.made_folder = Path(path), False, False
        self.purpose, self.hint = purpose, hint
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def holder(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()[:2]
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def is_stale(self, holder: tuple[str, int] | None) -> bool:
        if holder is None:  # unreadable: a crash between create and write
            return True
        host, pid = holder
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> None:
        self.made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder == (socket.gethostname(), os.getpid()):  # this process already holds it
                    self.held = True
                    return
                if not self.is_stale(holder):
                    host, pid = holder
                    raise SAMSPError(
                        f"{self.path.parent} is in use by another {self.purpose} (process {pid} on {host}, "
                        f"lock {self.path}); {self.hint}. If that process is gone, delete the lock file."
                    ) from None
                logger.warning("taking over %s, left by process %s that no longer runs", self.path, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.owner}\n")
            self.held = True
            atexit.register(self.release)
            return
        raise SAMSPError(f"{self.path}: could not take the lock; another run took it at the same moment")

    def release(self) -> None:
        """Remove the lock, and the folder it made if nothing else was written there: a refused run leaves no trace."""
        if self.held and self.holder() == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
            if self.made_folder and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        self.held = False


class TrainingRun:
    """Decides, before any heavy work, whether this training run is new or resumes the state in `state_path`."""

    def __init__(
        self,
        record: RunRecord,
        state_path: str | Path,
        best_model_path: str | Path,
        max_epochs: int,
        fresh: bool = False,
        lock_path: str | Path | None = None,
    ) -> None:
        self.record, self.max_epochs, self.fresh = record, max_epochs, fresh
        self.state_path, self.best_model_path = Path(state_path), Path(best_model_path)
        self.lock = FolderLock(lock_path or self.state_path.parent / "training.lock")
        self.resumes = False
        self.saved_parts: frozenset[str] = frozenset()

    @property
    def run_id(self) -> str:
        """The run's id: new, or the resumed run's once `start` has read it (the MLflow run name)."""
        return self.record.run_id

    def resumable(self, objects: Mapping[str, Any]) -> dict[str, Any]:
        """The part of `objects` (the resume loader's `load_dict`) that the saved state holds. A state written
        before the random state was saved resumes without it, and says that the rest of the run will differ from
        an uninterrupted one. A new run gets all of `objects` (the loader is built, not attached)."""
        if not self.resumes:
            return dict(objects)
        missing = sorted(set(objects) - self.saved_parts)
        if missing:
            logger.warning(
                "%s holds no %s (written by an older version): resuming without it, so the rest of this run will not "
                "repeat exactly what an uninterrupted run would have done",
                self.state_path,
                ", ".join(missing),
            )
        return {name: obj for name, obj in objects.items() if name in self.saved_parts}

    def start(self) -> bool:
        """Lock, clean up, then resume or start; returns whether the run resumes from `state_path`."""
        if is_writer():
            try:
                self.lock.acquire()
            except OSError as err:
                raise SAMSPError(
                    f"{self.state_path.parent} cannot be written ({err.strerror}); choose a writable --bundle_root"
                ) from err
            remove_stale_temp_files(self.state_path.parent)
        if self.state_path.exists() and self.fresh:
            if is_writer():
                self._move_previous_aside()
        elif self.state_path.exists():
            self._check_resumable(self._read_state())
            self.resumes = True
            return True
        logger.info(
            "new training run %s: %d epochs, writing to %s", self.record.run_id, self.max_epochs, self.state_path.parent
        )
        return False

    def finish(self) -> None:
        self.lock.release()

    def _read_state(self) -> dict[str, Any]:
        try:
            # mmap: only the run record is read here; the resume loader reads the tensors
            return torch.load(self.state_path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated or foreign files raise several different errors
            raise SAMSPError(f"{self.state_path}: cannot be read as a training state ({err}); {FRESH_HINT}") from err

    def _check_resumable(self, state: Mapping[str, Any]) -> None:
        saved = state.get("run")
        if not isinstance(saved, Mapping) or not isinstance(saved.get("settings"), Mapping):
            raise SAMSPError(f"{self.state_path}: holds no record of the settings it was trained with; {FRESH_HINT}")
        now = self.record.settings
        changed = sorted(k for k in set(saved["settings"]) | set(now) if saved["settings"].get(k) != now.get(k))
        if changed:
            diff = "; ".join(f"{k}: {saved['settings'].get(k)!r} in the saved run, {now.get(k)!r} now" for k in changed)
            raise SAMSPError(f"{self.state_path} was trained with other settings ({diff}); {FRESH_HINT}")
        trainer = state.get("trainer", {})  # ignite saves the iteration count and the epoch length
        done = int(trainer.get("iteration", 0)) // max(1, int(trainer.get("epoch_length") or 1))
        best = state.get("best_model", {})
        result = (
            f"best {best.get('metric_name') or 'validation metric'} {float(best.get('best_metric', 'nan')):.4f} "
            f"at epoch {best.get('best_epoch')}"
            if int(best.get("best_epoch", -1)) >= 0
            else "no best model yet"
        )
        if done >= self.max_epochs:
            raise SAMSPError(
                f"{self.state_path}: run {saved['run_id']} is finished ({done} of {self.max_epochs} epochs; {result}; "
                f"model: {self.best_model_path}). Nothing to train: raise --max_epochs to continue it, or pass "
                "--fresh True to start a new run"
            )
        self.record.load_state_dict(saved)
        self.saved_parts = frozenset(state)
        print(
            f"resuming training run {self.record.run_id} from {self.state_path}: {done} of {self.max_epochs} epochs "
            f"done ({result}); settings: {describe(now)}",
            flush=True,
        )

    def _move_previous_aside(self) -> None:
        aside = self.state_path.parent / "previous" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir(parents=True, exist_ok=True)
        self.state_path.replace(aside / self.state_path.name)
        if self.best_model_path.exists():
            try:
                os.link(self.best_model_path, aside / self.best_model_path.name)
            except OSError:
                shutil.copy2(self.best_model_path, aside / self.best_model_path.name)
        logger.warning("fresh run: the previous training state (and a copy of the best model) moved to %s", aside)
