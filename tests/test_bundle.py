"""The bundle's own commands, run as a user runs them, on the generated demo data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from ignite.engine import Engine
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow

CONFIGS = [str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/demo.json")]
DEMO = "['bundle/configs/train.json','bundle/configs/demo.json']"


def _bundle(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_saved_checkpoints_load_strictly_and_reproduce_outputs_and_every_tracking_param_is_logged(tmp_path):
    wf = ConfigWorkflow(
        config_file=CONFIGS,
        workflow_type="train",
        bundle_root=str(tmp_path),
        max_epochs=1,
        slices_per_volume=2,
        tracking="mlflow",
    )
    wf.initialize()
    wf.run()
    trained = wf.parser.get_parsed_content("network").eval()
    wf.finalize()
    fresh = wf.parser.get_parsed_content("network_def", lazy=False).eval()
    state = torch.load(tmp_path / "models/training_state.pt", weights_only=True)
    fresh.load_state_dict(state["network"], strict=True)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)
    fresh.load_state_dict(torch.load(tmp_path / "models/model.pt", weights_only=True), strict=True)
    best = json.loads((tmp_path / "models/model.json").read_text())
    assert best["metric_name"] == "val_mean_dice" and 0.0 <= best["metric_value"] <= 1.0 and best["epoch"] == 1
    assert state["trainer"]["iteration"] == 6 and state["best_model"]["best_epoch"] == 1

    client = MlflowClient(wf.parser.get_parsed_content("tracking_uri"))
    (run,) = client.search_runs([client.get_experiment_by_name("samsp").experiment_id])
    tracked = wf.parser.get_parsed_content("tracking_params")  # what the config says to track, as the run saw it
    assert {"sam_variant", "learning_rate", "optimizer", "train_cases"} <= set(tracked)  # the config is not empty
    assert {key: run.data.params.get(key) for key in tracked} == {key: str(value) for key, value in tracked.items()}


def user_error(result: subprocess.CompletedProcess) -> str:
    """The one-line message of a refused command (exit status 1, no traceback), without its prefix."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("samsp-monai error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0].removeprefix("samsp-monai error: ")


def test_plain_command_starts_from_litemedsam_and_official_sam_without_weights_stops_at_once(tmp_path):
    plain = _bundle("--config_file", "bundle/configs/train.json", "--bundle_root", str(tmp_path), timeout=300)
    assert user_error(plain).startswith("datalist not found")  # LiteMedSAM's weights were there; the data is not
    result = _bundle(
        "--config_file", "bundle/configs/train.json", "--bundle_root", str(tmp_path), "--sam_variant", "vit_b",
        timeout=300,
    )  # fmt: skip
    message = user_error(result)
    assert message.startswith(f"SAM checkpoint not found: {tmp_path / 'models/sam_vit_b_01ec64.pth'}. ")
    assert "download_large_files" in message and "demo.json" in message
    assert not (tmp_path / "models").exists()


def test_a_missing_datalist_is_one_line_naming_it_and_how_to_write_one(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = _bundle("--config_file", DEMO, "--bundle_root", str(tmp_path), "--dataset_dir", str(data), timeout=300)
    message = user_error(result)
    assert message.startswith(f"datalist not found: {data / 'datalist.json'} (dataset_dir: {data}). ")
    assert "scripts/make_datalist.py" in message and "--datalist_file" in message
    assert not (tmp_path / "models").exists()  # refused before the run claimed its folder


@pytest.mark.slow
def test_demo_training_command_end_to_end_and_resume(tmp_path):
    result = _bundle("--config_file", DEMO, "--bundle_root", str(tmp_path), "--max_epochs", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert [line.split(",")[0] for line in result.stdout.splitlines() if "val_mean_dice 0." in line] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]  # one progress line per epoch, with that epoch's validation
    assert "best validation val_mean_dice:" in result.stdout
    assert (tmp_path / "models/model.pt").is_file() and (tmp_path / "models/training_state.pt").is_file()
    assert (REPO / "bundle/demo_data/datalist.json").is_file()  # the bundle's one copy, whatever the bundle_root
    assert not (tmp_path / "demo_data").exists()

    resumed = _bundle("--config_file", DEMO, "--bundle_root", str(tmp_path), "--max_epochs", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resuming training run samsp-" in log and f"from {tmp_path / 'models/training_state.pt'}: 3 of 4" in log
    assert "epoch 4/4, loss" in log and "epoch 1/4" not in log
    assert torch.load(tmp_path / "models/training_state.pt", weights_only=True)["trainer"]["iteration"] == 24


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_processes_and_saves_plain_checkpoints(tmp_path):
    """multi_gpu_train.json on CPU (gloo): two ranks, one best model without DDP's `module.` prefix."""
    configs = "['bundle/configs/train.json','bundle/configs/demo.json','bundle/configs/multi_gpu_train.json']"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    cmd = [*torchrun, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    cmd += ["--bundle_root", str(tmp_path), "--max_epochs", "1"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best validation val_mean_dice:") == 2  # both ranks agree on the synced metric
    wf = ConfigWorkflow(config_file=CONFIGS, workflow_type="train", bundle_root=str(tmp_path))
    network = wf.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "models/model.pt", weights_only=True), strict=True)
    state = torch.load(tmp_path / "models/training_state.pt", weights_only=True)
    network.load_state_dict(state["network"], strict=True)
    assert state["trainer"]["iteration"] == 3  # 12 training volumes, batch 2, split over 2 ranks


def test_training_and_inference_configs_build_the_same_network_and_inputs():
    """inference.json repeats train.json's network and load chain (MONAI Label reads it alone): keep them equal."""
    train = json.loads((REPO / "bundle/configs/train.json").read_text())
    infer = json.loads((REPO / "bundle/configs/inference.json").read_text())
    assert infer["load_transforms"] == train["load_transforms"]
    # inference keeps its encoder exports beside the trained model (training's go to a cache folder)
    infer_network = {k: v for k, v in infer["network_def"].items() if k != "model_dir"}
    assert {**infer_network, "checkpoint": None} == {**train["network_def"], "checkpoint": None}
    shared = [k[1:] for k in train["network_def"].values() if isinstance(k, str) and k.startswith("@")]
    # training starts from the base weights, caches their embeddings and runs an exported encoder only while frozen
    own = ("sam_checkpoint", "embedding_cache", "runtime")
    assert {k: infer[k] for k in shared if k not in own} == {k: train[k] for k in shared if k not in own}


def test_validation_metric_scores_the_foreground_classes_only():
    """train.json's postprocessing and key metric on one prediction: class 1 perfect, class 2 missed, background
    nearly perfect. Foreground mean Dice is (1 + 0) / 2; counting the background would raise it to about 2/3."""
    parser = ConfigParser()
    parser.read_config(CONFIGS[0])
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    metric = parser.get_parsed_content("validate#key_metric#val_mean_dice")
    label = torch.zeros(1, 16, 16, dtype=torch.long)
    label[:, 2:6, 2:6], label[:, 10:12, 10:12] = 1, 2
    logits = torch.zeros(3, 16, 16)
    logits[1] = torch.where(label[0] == 1, 10.0, -10.0)  # class 2 is predicted nowhere
    engine = Engine(lambda engine, batch: [postprocessing({"pred": logits, "label": label})])
    metric.attach(engine, "val_mean_dice")
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["val_mean_dice"] == pytest.approx(0.5)


def test_the_epoch_count_that_runs_is_the_one_logged_recorded_and_scheduled(tmp_path, caplog):
    """MONAI Label sets only `train#trainer#max_epochs` (here 3); the run record, the start line, the tracked
    settings and the cosine horizon follow the trainer, not the config's `max_epochs` (25 in demo.json)."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path), "train#trainer#max_epochs": 3})
    run = parser.get_parsed_content("training_run")
    with caplog.at_level("INFO", logger="samsp_monai.training.runs"):
        run.start()
    run.finish()
    assert run.max_epochs == 3 and f": 3 epochs, writing to {tmp_path / 'models'}" in caplog.text
    assert parser.get_parsed_content("settings")["max_epochs"] == 3
    assert parser.get_parsed_content("lr_scheduler").T_max == 3
