"""Two demo trainings tracked by a real `mlflow server`, read back with MlflowClient and compared with the script."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from mlflow import MlflowClient

BUNDLE_VERSION = json.loads((REPO / "bundle/configs/metadata.json").read_text())["version"]
DEMO = "['bundle/configs/train.json','bundle/configs/demo.json']"
EPOCHS = 2
SELF_PROMPT = {"sp_on": "True", "sp_off": "False"}  # bundle root (under tmp_path) -> --self_prompt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts in `tmp_path`; stopped afterwards.

    Its own session, so that stopping it also stops the uvicorn worker it starts. The job runner (for GenAI jobs,
    seven extra processes) is switched off: tracking does not use it.
    """
    port, log = free_port(), tmp_path / "server.log"
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "art")),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def start_training(self_prompt: str, url: str, root: Path) -> subprocess.Popen:
    """The demo training as a user starts it, with the bundle's default experiment and run name."""
    command = [
        *(sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", DEMO),
        *("--bundle_root", str(root), "--max_epochs", str(EPOCHS), "--slices_per_volume", "2"),
        *("--self_prompt", self_prompt, "--tracking", "mlflow", "--tracking_uri", url),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread each: the two trainings run side by side
    with (root.parent / f"{root.name}.log").open("w") as log:
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_two_demo_trainings_land_in_mlflow_and_compare(mlflow_server: str, tmp_path: Path) -> None:
    # both at once: also shows that concurrent runs of one experiment do not write into each other
    trainings = {name: start_training(sp, mlflow_server, tmp_path / name) for name, sp in SELF_PROMPT.items()}
    for name, process in trainings.items():
        assert process.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("samsp")
    runs = client.search_runs([experiment.experiment_id])
    by_setting = {run.data.params["self_prompt"]: run for run in runs}
    assert len(runs) == 2 and set(by_setting) == {"True", "False"}
    run_names = {name: by_setting[sp].info.run_name for name, sp in SELF_PROMPT.items()}
    for name, sp in SELF_PROMPT.items():
        run = by_setting[sp]
        run_id, params = run.info.run_id, run.data.params
        assert run.info.status == "FINISHED" and run.info.run_name.startswith("samsp-")
        # one copy of the demo data for the bundle, whatever the bundle_root: both runs name the same data
        assert params["dataset_dir"] == str(REPO / "bundle" / "demo_data") and params["sam_variant"] == "vit_demo"
        assert params["max_epochs"] == str(EPOCHS) and params["slices_per_volume"] == "2"
        assert params["loss_terms"] == ("dice+ce+kl" if sp == "True" else "dice+ce")
        assert {"lora_rank", "distill_alpha", "optimizer", "learning_rate", "batch_size", "seed"} <= set(params)
        assert run.data.tags["bundle_version"] == BUNDLE_VERSION and run.data.tags["workflow"] == "training"
        assert Path(run.data.tags["best_model_path"]) == tmp_path / name / "models" / "model.pt"
        (model,) = client.search_logged_models([experiment.experiment_id], f"source_run_id = '{run_id}'")
        assert model.name == "model" and model.status == "READY"

        validation = sorted(client.get_metric_history(run_id, "val_mean_dice"), key=lambda m: m.step)
        assert [m.step for m in validation] == list(range(1, EPOCHS + 1))  # one value per validation
        assert all(0.0 <= m.value <= 1.0 for m in validation)
        assert run.data.metrics["best_val_mean_dice"] == max(m.value for m in validation)
        iterations = int(params["epoch_length"]) * EPOCHS
        for metric in ("train_loss", "train_loss_dice", "lr_group_0"):
            assert len(client.get_metric_history(run_id, metric)) == iterations, metric
        assert len(client.get_metric_history(run_id, "train_loss_kl")) == (iterations if sp == "True" else 0)
        empty_share = client.get_metric_history(run_id, "train_empty_y0_share")  # only with a prompted pass
        assert [m.step for m in empty_share] == (list(range(1, EPOCHS + 1)) if sp == "True" else [])
        assert all(0.0 <= m.value <= 1.0 for m in empty_share)

        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert "executed_config.json" in artifacts and "model" not in artifacts  # the model is a logged model
        config = client.download_artifacts(run_id, "executed_config.json", str(tmp_path / name))
        executed = json.loads(Path(config).read_text())
        assert executed["self_prompt"] == (sp == "True") and executed["max_epochs"] == EPOCHS

    out = tmp_path / "comparison"
    command = [sys.executable, "scripts/compare_runs.py", "--tracking_uri", mlflow_server, "--out_dir", str(out)]
    result = subprocess.run(
        [*command, "--label_params", "self_prompt"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, rule, *rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert "self_prompt" in header and "loss_terms" in header and "best val_mean_dice" in header
    assert "sam_variant" not in header  # same in both runs
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(run_names.values())
    with (out / "samsp_runs.csv").open() as f:
        table = {row["run_name"]: row for row in csv.DictReader(f)}
    assert {run_names[name]: sp for name, sp in SELF_PROMPT.items()} == {n: r["self_prompt"] for n, r in table.items()}
    assert (out / "samsp_val_mean_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
