"""MLflow tracking pieces for the bundle: what `--tracking mlflow` (MONAI's `MLFlowHandler`) cannot log by itself.

MONAI's trainer handler logs the loss, the learning rate (`lr_group_0`), `max_epochs`/`epoch_length` and the
executed config; the validator handler logs `val_mean_dice` per epoch. `MLflowRunDetails` adds to the same run
the SAM-SP params, tags for the bundle version and code revision, each loss term per iteration, the best
checkpoint and extra artifacts (evaluation CSV and figures).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_PARENT_RUN_ID
from monai.handlers import MLFlowHandler
from monai.utils import IgniteInfo, min_version, optional_import

from ..command_line import command_line_overrides, is_bundle_command
from ..errors import SAMSPError
from ..model_file import file_sha256
from .checkpoints import BestModelSaver
from .model_logging import log_trained_model
from .runs import RunRecord

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

logger = logging.getLogger(__name__)

CODE_DIR = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 3.0
# the URI schemes MLflow 3.17 has a tracking store for ("" is a local path)
MLFLOW_SCHEMES = (
    "",
    "databricks",
    "databricks-uc",
    "file",
    "http",
    "https",
    "mssql",
    "mysql",
    "postgresql",
    "sqlite",
    "uc",
)


class HasLossTerms(Protocol):
    last_terms: Mapping[str, float]


def unique_run_name(prefix: str = "samsp") -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>-<4 hex>`. MONAI's handlers join the run of that name that is still active,
    and without a name the oldest active run of the experiment: a unique name keeps a new run out of a crashed one.
    """
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def git_details(path: str | Path = CODE_DIR) -> dict[str, str]:
    """`commit`, `dirty` ("true"/"false"), `branch` and `repo_url` (remote `origin`, if any) of the git checkout
    holding `path`; {} outside git. `GIT_OPTIONAL_LOCKS=0` keeps `git status` from rewriting the index under
    someone else's `git add`."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        details = {
            "commit": git("rev-parse", "HEAD"),
            "dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        }
    except (OSError, subprocess.SubprocessError):
        return {}
    try:
        details["repo_url"] = git("remote", "get-url", "origin")
    except (OSError, subprocess.SubprocessError):
        pass
    return details


def code_revision(path: str | Path = CODE_DIR) -> str:
    """The git commit of the code at `path`, with `-dirty` when tracked files differ from it; `unknown` outside git."""
    details = git_details(path)
    if not details:
        return "unknown"
    return f"{details['commit']}-dirty" if details["dirty"] == "true" else details["commit"]


def source_tags(path: str | Path = CODE_DIR) -> dict[str, str]:
    """MLflow's standard tags (`mlflow.user`, `mlflow.source.name`/`type`, `mlflow.source.git.commit`/`branch`/
    `repoURL`): `mlflow.start_run` sets them, MONAI's handler (which creates runs with the client) does not. The
    git tags describe this package's checkout, not the entry script's (`monai/bundle/__main__.py`)."""
    tags = {k: v for k, v in resolve_tags().items() if not k.startswith("mlflow.source.git.")}
    git = git_details(path)
    for key, tag in (("commit", MLFLOW_GIT_COMMIT), ("branch", MLFLOW_GIT_BRANCH), ("repo_url", MLFLOW_GIT_REPO_URL)):
        if key in git:
            tags[tag] = git[key]
    return tags


def file_digest(path: str | Path | None, length: int = 12) -> str | None:
    """Short SHA-256 of a file: tells whether two runs used the same datalist (split) or checkpoint, wherever it
    lay. Read in chunks, as a checkpoint can be hundreds of MB. None when there is no such file (MONAI Label
    hands the trainer its data without a datalist file; a run from scratch has no checkpoint)."""
    if path is None or not Path(path).is_file():
        return None
    return file_sha256(path)[:length]


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


def require_usable(tracking_uri: str) -> None:
    """One line, at once, for a tracking URI MLflow cannot use: an unknown scheme (MLflow: `KeyError: 'foo'`), a
    SQLite store that cannot be written (MLflow: about 100 s of retries, then a traceback), or an HTTP(S) server
    that does not answer (`require_reachable`)."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme not in MLFLOW_SCHEMES and not Path(tracking_uri).is_absolute():
        raise SAMSPError(
            f"--tracking_uri {tracking_uri}: MLflow knows no store of the scheme {scheme!r}; use one of "
            f"{', '.join(sorted(s + '://' for s in MLFLOW_SCHEMES if s))}, e.g. sqlite:////abs/path/mlruns.db"
        )
    if scheme == "sqlite":
        database = Path(urllib.parse.urlparse(tracking_uri).path)
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with open(database, "ab"):
                pass
        except OSError as err:
            raise SAMSPError(
                f"MLflow store {tracking_uri} cannot be written ({err.strerror}); pass --tracking_uri "
                "sqlite:////a/writable/folder/mlruns.db, or leave out --tracking mlflow"
            ) from err
    require_reachable(tracking_uri)


def require_usable_when_tracked(tracking_uri: str, argv: Sequence[str] | None = None) -> None:
    """`require_usable` in `initialize` when the command line asks for `--tracking`: MONAI builds its MLflow
    handlers after `initialize`, and MLflow fails right there (with a traceback, or after minutes of retries)."""
    argv = sys.argv if argv is None else argv
    if is_bundle_command(argv) and "tracking" in command_line_overrides(argv)[1]:
        require_usable(tracking_uri)


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


def training_run_of(client: MlflowClient, model_path: str | Path | None) -> Run | None:
    """The training run (in any experiment of `client`'s store) whose best model is the file `model_path`, found by
    the `model_sha256` tag training runs set. Of several runs that trained the same weights (a rerun of a
    deterministic training), the one that wrote this very path, else the latest; None if none."""
    digest = file_digest(model_path)
    if digest is None:
        return None
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, f"tags.model_sha256 = '{digest}' and tags.workflow = 'training'", order_by=["start_time DESC"]
    )
    here = str(Path(model_path).resolve())
    return next((r for r in runs if r.data.tags.get("best_model_path") == here), runs[0] if runs else None)


class MLflowRunDetails:
    """Completes the MLflow run of the engine's `MLFlowHandler`; does nothing when the engine has none.

    Attach it before that handler (list it last in the bundle's handlers: MONAI appends its handler after them),
    so that everything here lands before the run is closed at `COMPLETED`.

    - `STARTED`: checks that the tracking store can be used (`require_usable`); with a `record` that names
      the MLflow run of an earlier part of this training run (a resumed run), reopens that run, also for the
      `validator`'s handler, so that a training run is one MLflow run however often it was resumed; opens the run
      through the `MLFlowHandler` (its `start` is re-entrant) and stores its id in `record`. Logs `params` (those
      a resumed run already has keep their first value; a changed one is noted in the tag `changed_on_resume`),
      `tags`, MLflow's standard source and git tags, and the executed config under the stable name
      `executed_config.json` (MONAI would log it as `config_<time>.json`, a new name per run). With
      `evaluated_model` (an evaluation), links the run to the training run that produced that file
      (`training_run_of`): tag `training_run_id` and MLflow's parent run, so the UI nests it under that run.
    - `ITERATION_COMPLETED` (with `loss`): each term of `loss.last_terms` as `<loss_prefix><term>` at the
      iteration, and once the param `loss_terms` (the terms the loss actually computed, e.g. `dice+ce+kl`).
    - `EPOCH_COMPLETED` and `COMPLETED` (with `best_model`): the run's best so far, `best_<key metric>` and
      `best_epoch` (restored on resume, so never the best of one part only), and the tags `best_model_path` and
      `model_sha256`. At `COMPLETED`, with `log_model`, the best model as the MLflow model `model`
      (`model_logging.log_trained_model`, registered as `registered_model_name` if given); then each of
      `artifacts` (a file, or a folder logged under its own name) that exists.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        loss: HasLossTerms | None = None,
        best_model: BestModelSaver | None = None,
        artifacts: Sequence[str | Path] = (),
        loss_prefix: str = "train_loss_",
        record: RunRecord | None = None,
        validator: Engine | None = None,
        log_model: bool = False,
        registered_model_name: str | None = None,
        evaluated_model: str | Path | None = None,
    ) -> None:
        self.params, self.tags = dict(params or {}), dict(tags or {})
        self.loss, self.best_model, self.loss_prefix = loss, best_model, loss_prefix
        self.artifacts = [Path(a) for a in artifacts]
        self.record, self.validator = record, validator
        self.log_model, self.registered_model_name = log_model, registered_model_name
        self.evaluated_model = evaluated_model
        self.mlflow: MLFlowHandler | None = None
        self._terms_logged = False
        self._logged_best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        if self.loss is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.log_loss_terms)
        if self.best_model is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_best)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    @property
    def run_id(self) -> str | None:
        run = self.mlflow.cur_run if self.mlflow is not None else None
        return run.info.run_id if run is not None else None

    def start(self, engine: Engine) -> None:
        self.mlflow = find_mlflow_handler(engine)
        if self.mlflow is None:
            return
        client = self.mlflow.client
        require_usable(client.tracking_uri)
        resumed = self._reopen_recorded_run()
        self.mlflow.start(engine)
        run_id = self.run_id
        if self.record is not None:
            self.record.mlflow_run_id = run_id
        validator_handler = find_mlflow_handler(self.validator) if self.validator is not None else None
        if validator_handler is not None:
            validator_handler.cur_run = self.mlflow.cur_run
        self._log_executed_config()
        run = client.get_run(run_id)
        params = {k: str(v) for k, v in self.params.items()}
        changed = {k: f"{run.data.params[k]} -> {v}" for k, v in params.items() if run.data.params.get(k, v) != v}
        tags = {**source_tags(), **{k: str(v) for k, v in self.tags.items()}, **self._training_link()}
        if resumed:
            tags["resumes"] = str(int(run.data.tags.get("resumes", "0")) + 1)
        if changed:
            earlier = run.data.tags.get("changed_on_resume")
            now = "; ".join(f"{k}: {v}" for k, v in changed.items())
            tags["changed_on_resume"] = f"{earlier}; {now}" if earlier else now
        self._log(params={k: v for k, v in params.items() if k not in run.data.params}, tags=tags)
        logger.info(
            "MLflow run %s (%s) at %s%s",
            self.mlflow.cur_run.info.run_name,
            run_id,
            client.tracking_uri,
            " (resumed)" if resumed else "",
        )

    def _reopen_recorded_run(self) -> bool:
        """Make the MLflow run `record` names (an earlier part of this training run) the handler's run again."""
        run_id = self.record.mlflow_run_id if self.record is not None else None
        if not run_id:
            return False
        client = self.mlflow.client
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            logger.warning(
                "training run %s logged its earlier epochs to MLflow run %s, which %s does not hold (another "
                "--tracking_uri, or deleted): this part logs to a new MLflow run",
                self.record.run_id,
                run_id,
                client.tracking_uri,
            )
            return False
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.mlflow.cur_run = client.get_run(run_id)
        return True

    def _log_executed_config(self) -> None:
        """Log the config file MONAI's handler would log as `config_<time>.json` as `executed_config.json`."""
        configs = [Path(p) for p in self.mlflow.artifacts if isinstance(p, (str, Path)) and Path(p).is_file()]
        self.mlflow.artifacts = ()
        for path in configs:
            self.mlflow.client.log_text(self.run_id, path.read_text(), "executed_config.json")

    def _training_link(self) -> dict[str, str]:
        """For an evaluation: the tags that link it to the training run of the evaluated model, if it is known."""
        if self.evaluated_model is None:
            return {}
        training = training_run_of(self.mlflow.client, self.evaluated_model)
        if training is None:
            logger.info(
                "no training run in %s produced %s: not linked", self.mlflow.client.tracking_uri, self.evaluated_model
            )
            return {}
        return {
            "training_run_id": training.info.run_id,
            "training_run_name": training.info.run_name,
            MLFLOW_PARENT_RUN_ID: training.info.run_id,
        }

    def log_loss_terms(self, engine: Engine) -> None:
        terms = dict(self.loss.last_terms)
        if self.run_id is None or not terms:
            return
        params = {} if self._terms_logged else {"loss_terms": "+".join(terms)}
        self._terms_logged = True
        self._log(
            metrics={f"{self.loss_prefix}{k}": v for k, v in terms.items()}, step=engine.state.iteration, params=params
        )

    def log_best(self, engine: Engine) -> None:
        """The run's best so far, at the epoch: a run that stops early still shows its best model."""
        best = self.best_model
        if self.run_id is None or best.best_epoch < 0:
            return
        tags = {"best_model_path": str(best.path.resolve())}
        if best.best_epoch != self._logged_best_epoch and (digest := file_digest(best.path)) is not None:
            tags["model_sha256"] = digest
        self._logged_best_epoch = best.best_epoch
        self._log(
            metrics={f"best_{best.metric_name}": best.best_metric, "best_epoch": best.best_epoch},
            step=engine.state.epoch,
            tags=tags,
        )

    def complete(self, engine: Engine) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        client = self.mlflow.client
        if self.best_model is not None:
            self.log_best(engine)
            if self.log_model and self.best_model.path.is_file():
                log_trained_model(
                    client, run_id, self.best_model.network, self.best_model.path, "model", self.registered_model_name
                )
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
