"""MLflow tracking pieces for the bundle: what `--tracking mlflow` (MONAI's `MLFlowHandler`) cannot log by itself.

MONAI's trainer handler logs the loss, the learning rate (`lr_group_0`), `max_epochs`/`epoch_length` and the
executed config; the validator handler logs `val_mean_dice` per epoch. `MLflowRunDetails` adds to the same run
the SAM-SP params, tags for the bundle version and code revision, each loss term per iteration, the best
checkpoint and extra artifacts (evaluation CSV and figures).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlflow.entities import Metric, Param, RunTag
from monai.handlers import MLFlowHandler
from monai.utils import IgniteInfo, min_version, optional_import

from ..errors import SAMSPError
from .checkpoints import BestModelSaver

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

logger = logging.getLogger(__name__)

CODE_DIR = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 3.0


class HasLossTerms(Protocol):
    last_terms: Mapping[str, float]


def unique_run_name(prefix: str = "samsp") -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>-<4 hex>`. MONAI's handlers join the run of that name that is still active,
    and without a name the oldest active run of the experiment: a unique name keeps a new run out of a crashed one.
    """
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def code_revision(path: str | Path = CODE_DIR) -> str:
    """The git commit of the code at `path`, with `-dirty` when tracked files differ from it; `unknown` outside git.

    `GIT_OPTIONAL_LOCKS=0` keeps `git status` from rewriting the index under someone else's `git add`.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def file_digest(path: str | Path | None, length: int = 12) -> str | None:
    """Short SHA-256 of a file: tells whether two runs used the same datalist (split) or checkpoint, wherever it
    lay. Read in chunks, as a checkpoint can be hundreds of MB. None when there is no such file (MONAI Label
    hands the trainer its data without a datalist file; a run from scratch has no checkpoint)."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def require_reachable(tracking_uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when an HTTP(S) tracking server does not answer: MLflow's own client retries for minutes.

    Any HTTP answer counts (even 401/404: a server is there); a refused connection, an unknown host or no answer
    within `timeout` seconds raises a `SAMSPError`. Other URIs (SQLite, Databricks, ...) are not probed.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SAMSPError(
            f"MLflow tracking server {tracking_uri} does not answer ({reason}); start it, correct --tracking_uri, "
            "or leave out --tracking mlflow (or --tracking_uri, for the local SQLite store)"
        ) from err


def find_mlflow_handler(engine: Engine) -> MLFlowHandler | None:
    """The `MLFlowHandler` attached to `engine`, or None when tracking is off (or disabled on this rank).

    `--tracking mlflow` appends that handler to the config at run time, so the bundle cannot refer to it. Ignite
    has no public listing of an engine's handlers: this reads `engine._event_handlers`, where
    `MLFlowHandler.attach` always registers its bound `start` method for `Events.STARTED`.
    """
    for handler, _, _ in engine._event_handlers[Events.STARTED]:
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, MLFlowHandler):
            return owner
    return None


class MLflowRunDetails:
    """Completes the MLflow run of the engine's `MLFlowHandler`; does nothing when the engine has none.

    Attach it before that handler (list it last in the bundle's handlers: MONAI appends its handler after them),
    so that everything here lands before the run is closed at `COMPLETED`.

    - `STARTED`: checks that an HTTP tracking server answers (`require_reachable`), opens the run through the
      `MLFlowHandler` (its `start` is re-entrant) and logs `params` and `tags`.
    - `ITERATION_COMPLETED` (with `loss`): each term of `loss.last_terms` as `<loss_prefix><term>` at the
      iteration, and once the param `loss_terms` (the terms the loss actually computed, e.g. `dice+ce+kl`).
    - `COMPLETED`: with `best_model`, the metrics `best_<key metric>` and `best_epoch` and the tag
      `best_model_path`; then each of `artifacts` (a file, or a folder logged under its own name) that exists.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        loss: HasLossTerms | None = None,
        best_model: BestModelSaver | None = None,
        artifacts: Sequence[str | Path] = (),
        loss_prefix: str = "train_loss_",
    ) -> None:
        self.params, self.tags = dict(params or {}), dict(tags or {})
        self.loss, self.best_model, self.loss_prefix = loss, best_model, loss_prefix
        self.artifacts = [Path(a) for a in artifacts]
        self.mlflow: MLFlowHandler | None = None
        self._terms_logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        if self.loss is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.log_loss_terms)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    @property
    def run_id(self) -> str | None:
        run = self.mlflow.cur_run if self.mlflow is not None else None
        return run.info.run_id if run is not None else None

    def start(self, engine: Engine) -> None:
        self.mlflow = find_mlflow_handler(engine)
        if self.mlflow is None:
            return
        require_reachable(self.mlflow.client.tracking_uri)
        self.mlflow.start(engine)
        self._log(params={k: str(v) for k, v in self.params.items()}, tags={k: str(v) for k, v in self.tags.items()})
        logger.info(
            "MLflow run %s (%s) at %s", self.mlflow.cur_run.info.run_name, self.run_id, self.mlflow.client.tracking_uri
        )

    def log_loss_terms(self, engine: Engine) -> None:
        terms = dict(self.loss.last_terms)
        if self.run_id is None or not terms:
            return
        params = {} if self._terms_logged else {"loss_terms": "+".join(terms)}
        self._terms_logged = True
        self._log(
            metrics={f"{self.loss_prefix}{k}": v for k, v in terms.items()}, step=engine.state.iteration, params=params
        )

    def complete(self, engine: Engine) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        best = self.best_model
        if best is not None and best.best_epoch >= 0:
            self._log(
                metrics={f"best_{best.metric_name}": best.best_metric, "best_epoch": best.best_epoch},
                tags={"best_model_path": str(best.path)},
            )
        client = self.mlflow.client
        for path in self.artifacts:
            if path.is_file():
                client.log_artifact(run_id, str(path))
            elif path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
            else:
                logger.warning("MLflow artifact %s does not exist; not logged", path)

    def _log(
        self,
        metrics: Mapping[str, float] | None = None,
        step: int = 0,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        now = int(time.time() * 1000)
        self.mlflow.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )
