"""Training integrity through the bundle's own training config: reruns, fresh runs, the lock, non-finite values,
the schedule of a resumed run, a data set without validation cases and an unreachable MLflow server."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, small_samsp
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from samsp_monai import ensure_demo_dataset
from samsp_monai.errors import find_user_error
from samsp_monai.training.checkpoints import BestModelSaver

CONFIGS = [str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/demo.json")]
TINY = {"max_epochs": 1, "slices_per_volume": 2, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """One demo data set for all tests, outside their bundle roots: a copied bundle_root then has the same data."""
    return Path(ensure_demo_dataset(str(tmp_path_factory.mktemp("demo") / "demo_data")))


@pytest.fixture(autouse=True)
def _use_demo_data(demo_data, monkeypatch) -> None:
    monkeypatch.setitem(TINY, "dataset_dir", str(demo_data))


def workflow(root: Path, **override) -> ConfigWorkflow:
    return ConfigWorkflow(config_file=CONFIGS, workflow_type="train", bundle_root=str(root), **(TINY | override))


def train(root: Path, **override) -> ConfigWorkflow:
    wf = workflow(root, **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def refusal(root: Path, run: bool = False, **override) -> str:
    wf = workflow(root, **override)
    with pytest.raises(Exception) as caught:
        wf.initialize()
        if run:
            wf.run()
    wf.finalize()
    error = find_user_error(caught.value)
    assert error is not None, f"not a user error: {caught.value!r}"
    return str(error)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data) -> Path:
    """A bundle_root holding a finished one-epoch demo run; tests work on copies."""
    root = tmp_path_factory.mktemp("trained")
    train(root, dataset_dir=str(demo_data))
    return root


@pytest.fixture
def finished(trained, tmp_path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(trained, root)
    return root


def state(root: Path) -> dict:
    return torch.load(root / "models/training_state.pt", weights_only=True)


def test_a_finished_run_rerun_says_so_and_what_to_do(finished):
    before = (finished / "models/training_state.pt").read_bytes()
    message = refusal(finished)
    assert f"run {state(finished)['run']['run_id']} is finished (1 of 1 epochs" in message
    assert "raise --max_epochs to continue it, or pass --fresh True" in message
    assert (finished / "models/training_state.pt").read_bytes() == before


@pytest.mark.parametrize(
    "override, named",
    [
        ({"learning_rate": 0.01}, "learning_rate: 0.001 in the saved run, 0.01 now"),
        ({"self_prompt": False}, "self_prompt: True in the saved run, False now"),
        ({"num_classes": 1, "class_names": {"1": "hippocampus"}}, "num_classes: 2 in the saved run, 1 now"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_them(finished, override, named):
    message = refusal(finished, max_epochs=2, **override)
    assert named in message and "pass --fresh True to start a new run" in message


def test_a_rerun_on_another_data_set_is_refused(finished, demo_data, tmp_path):
    other = tmp_path / "other_data"
    shutil.copytree(demo_data, other)
    datalist = json.loads((other / "datalist.json").read_text())
    datalist["training"] = datalist["training"][:-1]
    (other / "datalist.json").write_text(json.dumps(datalist))
    message = refusal(finished, max_epochs=2, dataset_dir=str(other))
    assert "dataset_dir:" in message and "datalist_sha256:" in message


def test_resume_with_more_epochs_states_the_run_and_stretches_the_cosine(finished, capsys):
    run_id = state(finished)["run"]["run_id"]
    wf = workflow(finished, max_epochs=3)
    wf.initialize()
    lrs = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(e.optimizer.param_groups[0]["lr"]))
    wf.run()
    wf.finalize()
    out = capsys.readouterr().out
    assert f"resuming training run {run_id} from {finished / 'models/training_state.pt'}: 1 of 3 epochs done" in out
    assert "settings: " in out and "amp=False, " in out and "batch_size=2," in out and "learning_rate=0.001" in out
    # the cosine over 3 epochs at epochs 1 and 2: lr0 * (1 + cos(pi * t / 3)) / 2; the old 1-epoch curve gave 0
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 3)) / 2 for t in (1, 2)])
    saved = state(finished)
    assert saved["run"]["run_id"] == run_id and saved["trainer"]["iteration"] == 18
    assert saved["best_model"]["metric_name"] == "val_mean_dice"


def test_a_state_without_the_random_state_resumes_and_says_it_will_not_repeat_exactly(finished, capfd):
    """A training_state.pt written before the random state was saved (no `rng` entry) still resumes."""
    path = finished / "models/training_state.pt"
    old = torch.load(path, weights_only=True)
    del old["rng"]
    torch.save(old, path)
    train(finished, max_epochs=2)
    assert f"{path} holds no rng (written by an older version): resuming without it" in "".join(capfd.readouterr())
    resumed = state(finished)
    assert resumed["trainer"]["iteration"] == 2 * old["trainer"]["iteration"] and "rng" in resumed


def test_fresh_moves_the_previous_state_aside_and_keeps_the_best_model(finished):
    old_state = (finished / "models/training_state.pt").read_bytes()
    old_model = (finished / "models/model.pt").read_bytes()
    old_id = state(finished)["run"]["run_id"]
    train(finished, fresh=True)
    (aside,) = (finished / "models/previous").iterdir()
    assert (aside / "training_state.pt").read_bytes() == old_state
    assert (aside / "model.pt").read_bytes() == old_model
    assert state(finished)["run"]["run_id"] != old_id
    assert json.loads((finished / "models/model.json").read_text())["epoch"] == 1


def test_an_unreadable_training_state_is_refused(finished):
    path = finished / "models/training_state.pt"
    path.write_bytes(path.read_bytes()[:1000])
    message = refusal(finished, max_epochs=2)
    assert f"{path}: cannot be read as a training state" in message and "--fresh True" in message


def test_a_second_run_in_the_same_bundle_root_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "models/training.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(f"{socket.gethostname()} {holder.pid}\n")
        message = refusal(tmp_path)
        assert f"is in use by another training run (process {holder.pid} on {socket.gethostname()}" in message
        assert lock.read_text().split()[1] == str(holder.pid)
        assert not (tmp_path / "models/training_state.pt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_and_stale_temporary_files_are_cleaned_up(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    models = tmp_path / "models"
    models.mkdir()
    (models / "training.lock").write_text(f"{socket.gethostname()} {gone.pid}\n")
    stale = [models / ".model.pt.k2j4h5g6.tmp", models / ".training_state.pt.a_b1c2d3.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (models / "notes.tmp").write_text("not ours")
    wf = workflow(tmp_path)
    wf.initialize()
    assert (models / "training.lock").read_text().split()[1] == str(os.getpid())
    assert not any(p.exists() for p in stale) and (models / "notes.tmp").exists()
    wf.finalize()
    assert not (models / "training.lock").exists()


def test_a_non_finite_loss_stops_the_run_and_nothing_is_saved(tmp_path):
    message = refusal(tmp_path, run=True, learning_rate=1e30)
    assert message.startswith("training loss is nan at epoch 1, iteration 2 of 6: training stopped")
    assert not (tmp_path / "models/model.pt").exists() and not (tmp_path / "models/training_state.pt").exists()


def test_a_non_finite_loss_exits_non_zero_with_one_message(tmp_path):
    config = "['bundle/configs/train.json','bundle/configs/demo.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config]
    cmd += ["--bundle_root", str(tmp_path), "--max_epochs", "1", "--slices_per_volume", "2", "--learning_rate", "1e30"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "samsp-monai error: training loss is nan at epoch 1, iteration 2 of 6" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "models").exists()  # the lock's folder goes with the lock when nothing was written


def test_best_model_saver_never_saves_a_non_finite_metric_or_network(tmp_path):
    network = small_samsp()
    saver = BestModelSaver(tmp_path / "model.pt", network)
    metrics = iter([float("nan"), float("inf"), 0.5, 0.7])
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine):
        engine.state.metrics["val_mean_dice"] = next(metrics)

    saver.attach(evaluator)
    for epoch in (1, 2):
        evaluator.run([0], max_epochs=epoch)
        assert not (tmp_path / "model.pt").exists()
    evaluator.run([0], max_epochs=3)
    assert json.loads((tmp_path / "model.json").read_text())["metric_value"] == 0.5
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    evaluator.run([0], max_epochs=4)
    assert json.loads((tmp_path / "model.json").read_text())["metric_value"] == 0.5
    assert (saver.best_metric, saver.best_epoch) == (0.5, 3)


def test_without_validation_cases_the_last_model_is_saved_and_the_summary_says_so(demo_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    datalist = json.loads((data / "datalist.json").read_text())
    (data / "datalist.json").write_text(json.dumps({"training": datalist["training"][:4], "validation": []}))
    train(tmp_path / "root", dataset_dir=str(data))
    out = capsys.readouterr().out
    model = tmp_path / "root/models/model.pt"
    assert f"no validation ran: saved the model of the last epoch (1) to {model}" in out
    assert "-inf" not in out and "epoch -1" not in out
    record = json.loads((model.parent / "model.json").read_text())
    assert record["epoch"] == 1 and record["metric_value"] is None


def test_an_unreachable_tracking_server_fails_fast(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    message = refusal(tmp_path, run=True, tracking="mlflow", tracking_uri=f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 120
    assert f"MLflow tracking server http://127.0.0.1:{port} does not answer" in message
    assert not (tmp_path / "models/training_state.pt").exists()
