"""One training run is one MLflow run, however often it is interrupted, and it ends as the same run would have
ended without interruption; its best model is logged as an MLflow model that predicts what `model.pt` predicts.

Real components: the bundle's training config (demo network, tiny settings) run in-process by MONAI's
`ConfigWorkflow`, a real SQLite MLflow store, `scripts/compare_runs.py` as a user runs it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from conftest import REPO
from ignite.engine import Events
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import path_to_sqlite_uri

from samsp_monai import ensure_demo_dataset
from samsp_monai.training.model_logging import model_weights

pytestmark = pytest.mark.slow  # three demo trainings (about 80 s on 2 cores)

CONFIGS = [str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/demo.json")]
EPOCHS = 3
CRASH_AT = 9  # iteration 9 of 6 per epoch: in the middle of epoch 2, after epoch 1's state was saved
REGISTERED = "samsp-demo"


class SimulatedCrash(RuntimeError):
    pass


class CrashAt:
    """A trainer handler that fails at one iteration, as a crash (or a kill) would stop the run there."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine) -> None:
        raise SimulatedCrash(f"simulated crash at iteration {self.iteration}")


def workflow(root: Path, store: Path, data: Path, **override: object) -> ConfigWorkflow:
    settings = {"max_epochs": EPOCHS, "slices_per_volume": 2, "dataset_dir": str(data)} | override
    return ConfigWorkflow(
        config_file=CONFIGS,
        workflow_type="train",
        tracking="mlflow",
        tracking_uri=path_to_sqlite_uri(str(store)),
        bundle_root=str(root),
        logging_file=False,
        **settings,
    )


def train(root: Path, store: Path, data: Path, crash_at: int | None = None, **override: object) -> tuple:
    """Run the training command in-process; returns the best (value, epoch) its evaluator reports at the end (the
    console's per-epoch "best ... at epoch" comes from there)."""
    wf = workflow(root, store, data, **override)
    if crash_at is not None:  # added to the config, so that the config is built in its usual order
        wf.parser["train#handlers"].append({"_target_": "test_mlflow_runs.CrashAt", "iteration": crash_at})
    wf.initialize()
    if crash_at is not None:
        with pytest.raises(RuntimeError) as stopped:  # MONAI wraps it as a failed config expression
            wf.run()
        assert isinstance(stopped.value.__cause__, SimulatedCrash)
    else:
        wf.run()
    wf.finalize()
    state = wf.parser.get_parsed_content("validate#evaluator").state
    return state.best_metric, state.best_metric_epoch


def evaluate(root: Path, store: Path, data: Path) -> None:
    """evaluate.json on the model in `root`, stacked on the training config (in the order that works)."""
    configs = [str(REPO / "bundle/configs" / name) for name in ("train.json", "evaluate.json", "demo.json")]
    wf = ConfigWorkflow(
        config_file=configs,
        workflow_type=None,
        tracking="mlflow",
        tracking_uri=path_to_sqlite_uri(str(store)),
        bundle_root=str(root),
        logging_file=False,
        dataset_dir=str(data),
    )
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.fixture(scope="module")
def trainings(tmp_path_factory) -> dict:
    """The same demo training twice into one store: straight through (its model registered), and interrupted in
    epoch 2, then resumed by the same command; then an evaluation of the first one's model."""
    tmp = tmp_path_factory.mktemp("mlflow_runs")
    store, data = tmp / "mlruns.db", Path(ensure_demo_dataset(tmp / "demo_data"))
    straight, interrupted = tmp / "straight", tmp / "interrupted"
    console = {"straight": train(straight, store, data, registered_model_name=REGISTERED)}
    train(interrupted, store, data, crash_at=CRASH_AT)
    console["interrupted"] = train(interrupted, store, data)
    evaluate(straight, store, data)
    return {"tmp": tmp, "store": store, "straight": straight, "interrupted": interrupted, "console": console}


def training_run_of(client: MlflowClient, root: Path):
    """The MLflow run(s) whose best model is `root/models/model.pt`."""
    experiment = client.get_experiment_by_name("samsp")
    return client.search_runs([experiment.experiment_id], f"tags.best_model_path = '{root / 'models' / 'model.pt'}'")


def history(client: MlflowClient, run_id: str, metric: str) -> dict[int, float]:
    """{step: value} of a metric; a step logged twice (an epoch redone after a crash) keeps its latest value."""
    points = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in points}


def test_an_interrupted_run_is_one_mlflow_run_that_ends_like_the_uninterrupted_one(trainings) -> None:
    client = MlflowClient(path_to_sqlite_uri(str(trainings["store"])))
    (straight,) = training_run_of(client, trainings["straight"])
    (interrupted,) = training_run_of(client, trainings["interrupted"])  # one run, not one per part
    assert len(client.search_runs([straight.info.experiment_id], "tags.workflow = 'training'")) == 2
    assert interrupted.info.status == straight.info.status == "FINISHED"
    assert interrupted.data.tags["resumes"] == "1" and "resumes" not in straight.data.tags

    # the resumed part went on exactly as the uninterrupted run: same validation scores, same best, same model
    dice = history(client, straight.info.run_id, "val_mean_dice")
    assert list(dice) == [1, 2, 3]
    assert history(client, interrupted.info.run_id, "val_mean_dice") == dice
    for run in (straight, interrupted):
        assert run.data.metrics["best_val_mean_dice"] == max(dice.values())
        assert run.data.metrics["best_epoch"] == max(dice, key=dice.get)
    best = (max(dice.values()), max(dice, key=dice.get))
    assert trainings["console"] == {"straight": best, "interrupted": best}  # not the best since the resume
    weights = [model_weights(trainings[name] / "models" / "model.pt") for name in ("straight", "interrupted")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert interrupted.data.tags["model_sha256"] == straight.data.tags["model_sha256"]
    train_loss = history(client, interrupted.info.run_id, "train_loss")
    assert list(train_loss) == list(range(1, 6 * EPOCHS + 1))
    assert train_loss == history(client, straight.info.run_id, "train_loss")

    # what compare_runs.py shows: one row per training run, the same best at the same epoch
    out = trainings["tmp"] / "comparison"
    command = [sys.executable, "scripts/compare_runs.py", "--tracking_uri", client.tracking_uri, "--out_dir", str(out)]
    command += ["--filter", "tags.workflow = 'training'"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "samsp_runs.csv").open() as f:
        rows = {row["run_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == {straight.info.run_id, interrupted.info.run_id}
    shown = [(r["best val_mean_dice"], r["best epoch"], r["final val_mean_dice"]) for r in rows.values()]
    assert shown[0] == shown[1] and float(shown[0][0]) == max(dice.values())


def test_the_mlflow_run_has_stable_artifacts_and_standard_tags(trainings) -> None:
    client = MlflowClient(path_to_sqlite_uri(str(trainings["store"])))
    runs = [training_run_of(client, trainings[name])[0] for name in ("straight", "interrupted")]
    for run in runs:
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "executed_config.json" in artifacts and not any(a.startswith("config_") for a in artifacts)
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        assert tags["mlflow.source.git.commit"] == tags["code_revision"].removesuffix("-dirty")
        assert tags["mlflow.source.git.branch"]
    executed = client.download_artifacts(runs[1].info.run_id, "executed_config.json", str(trainings["tmp"]))
    assert json.loads(Path(executed).read_text())["max_epochs"] == EPOCHS


def test_an_evaluation_run_is_linked_to_the_training_run_of_its_model(trainings) -> None:
    client = MlflowClient(path_to_sqlite_uri(str(trainings["store"])))
    (training,) = training_run_of(client, trainings["straight"])
    (evaluation,) = client.search_runs([training.info.experiment_id], "tags.workflow = 'evaluation'")
    tags = evaluation.data.tags
    assert tags["training_run_id"] == tags["mlflow.parentRunId"] == training.info.run_id
    assert tags["training_run_name"] == training.info.run_name
    assert evaluation.data.params["checkpoint_sha256"] == training.data.tags["model_sha256"]
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"executed_config.json", "metrics_summary.json"} <= artifacts


def test_the_logged_model_loads_back_and_predicts_what_model_pt_predicts(trainings) -> None:
    uri = path_to_sqlite_uri(str(trainings["store"]))
    client = MlflowClient(uri)
    (run,) = training_run_of(client, trainings["straight"])
    (logged,) = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    version = client.get_model_version(REGISTERED, "1")
    assert version.run_id == run.info.run_id

    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser["bundle_root"] = str(trainings["straight"])
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(model_weights(trainings["straight"] / "models" / "model.pt"))
    image = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        expected = network(image)
    mlflow.set_tracking_uri(uri)
    try:
        for model_uri in (f"models:/{logged.model_id}", f"models:/{REGISTERED}/1"):
            loaded = mlflow.pytorch.load_model(model_uri)
            with torch.no_grad():
                assert torch.equal(loaded(image), expected), model_uri
        predicted = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1").predict(image.numpy())
    finally:
        mlflow.set_tracking_uri(None)
    assert torch.equal(torch.as_tensor(predicted), expected)
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(logged.model_id, "extra_files")}
    assert files == {"model.pt", "model.json"}  # the bundle's model file and its record, as in models/
