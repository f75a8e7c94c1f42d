"""What a user sees after training: a briefly trained demo model segments, and inference and evaluation keep
its answer in place (a flipped, shifted or class-swapped output scores far lower than the real one)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

DEMO = "['bundle/configs/train.json','bundle/configs/demo.json']"
DEMO_CONFIGS = [str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/demo.json")]
DEMO_DATA = REPO / "bundle/demo_data"  # the demo bundle's one copy of its data, whatever the bundle_root
DEMO_NETWORK = {"sam_variant": "vit_demo", "image_size": 128, "encoder_training": "full", "sw_batch_size": 20}
EPOCHS = 20  # held-out Dice well above MIN_DICE with both classes apart (the demo reaches 0.9 by 25)
MIN_DICE = 0.45


def plain_dice(pred: np.ndarray, label: np.ndarray, c: int) -> float:
    p, g = pred == c, label == c
    return 2.0 * float((p & g).sum()) / float(p.sum() + g.sum())


def demo_command(root, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", DEMO, "--bundle_root", str(root)]
    return [*cmd, *args]


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """The demo bundle trained for EPOCHS epochs, once per session, as a user runs it."""
    root = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        demo_command(root, "--max_epochs", str(EPOCHS)), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def validation_cases(root) -> list[dict[str, str]]:
    return json.loads((DEMO_DATA / "datalist.json").read_text())["validation"]


def run_config(configs: list[str], root, **overrides) -> None:
    wf = ConfigWorkflow(config_file=configs, workflow_type=None, bundle_root=str(root), **DEMO_NETWORK, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.mark.slow
def test_inference_segments_the_held_out_volumes_in_place(trained_demo, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = validation_cases(trained_demo)
    for case in cases:
        (inputs / os.path.basename(case["image"])).symlink_to(DEMO_DATA / case["image"])
    run_config(
        [str(REPO / "bundle/configs/inference.json")],
        tmp_path,
        ckpt_path=str(trained_demo / "models/model.pt"),
        dataset_dir=str(inputs),
    )
    scores = {"as written": [], "left-right flipped": [], "shifted by 8 voxels": [], "classes swapped": []}
    for case in cases:
        name = os.path.basename(case["image"]).removesuffix(".nii.gz")
        pred = np.asarray(nib.load(tmp_path / f"eval/{name}_seg.nii.gz").dataobj)
        label = np.asarray(nib.load(DEMO_DATA / case["label"]).dataobj)
        variants = {
            "as written": pred,
            "left-right flipped": pred[::-1],
            "shifted by 8 voxels": np.roll(pred, 8, axis=0),
            "classes swapped": np.choose(pred, [0, 2, 1]),
        }
        for variant, p in variants.items():
            scores[variant].append(np.mean([plain_dice(p, label, c) for c in (1, 2)]))
    means = {variant: float(np.mean(values)) for variant, values in scores.items()}
    assert means["as written"] > MIN_DICE, means
    assert all(means[v] < means["as written"] - 0.2 for v in means if v != "as written"), means


@pytest.mark.slow
def test_evaluation_scores_agree_with_an_independent_dice_of_the_inference_output(trained_demo, tmp_path):
    configs = [str(REPO / "bundle/configs/inference.json"), str(REPO / "bundle/configs/evaluate.json")]
    data = DEMO_DATA
    run_config(
        configs,
        tmp_path,
        ckpt_path=str(trained_demo / "models/model.pt"),
        dataset_dir=str(data),
        datalist_file=str(data / "datalist.json"),
    )
    with (tmp_path / "eval/metrics_per_case.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(validation_cases(trained_demo))
    for row in rows:
        name = row["case"]
        pred = np.asarray(nib.load(tmp_path / f"eval/{name}_seg.nii.gz").dataobj)
        label = np.asarray(nib.load(data / f"labelsTr/{name}.nii.gz").dataobj)
        assert float(row["dice"]) == pytest.approx(plain_dice(pred, label, int(row["class_id"])), abs=1e-6)
    summary = json.loads((tmp_path / "eval/metrics_summary.json").read_text())
    assert summary["overall"]["dice"] > MIN_DICE


def assert_same_state(live, saved, where: str) -> None:
    """Nested state dicts equal, tensors exactly."""
    if isinstance(saved, dict):
        assert set(live) == set(saved), where
        for key in saved:
            assert_same_state(live[key], saved[key], f"{where}.{key}")
    elif isinstance(saved, torch.Tensor):
        assert torch.equal(torch.as_tensor(live), saved), where
    elif isinstance(saved, list | tuple):
        assert len(live) == len(saved), where
        for i, (a, b) in enumerate(zip(live, saved, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert live == saved, where


@pytest.mark.slow
def test_a_killed_training_resumes_exactly_from_its_saved_state(tmp_path):
    """SIGKILL the demo training after its second epoch is saved, rerun it with the same settings, and check that
    network, optimizer, scheduler, epoch and best-model tracker start from the file and the run ends where an
    uninterrupted one would."""
    settings = {"max_epochs": 5, "slices_per_volume": 2}
    args = [f"--{k}={v}" for k, v in settings.items()]
    state_path = tmp_path / "models/training_state.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "killed.log").open("w") as log:
        run = subprocess.Popen(demo_command(tmp_path, *args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not (state_path.is_file() and torch.load(state_path, weights_only=True)["trainer"]["iteration"] >= 12):
        assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()
    saved = torch.load(state_path, weights_only=True)
    epoch_length = saved["trainer"]["epoch_length"]
    killed_at = saved["trainer"]["iteration"] // epoch_length
    assert 2 <= killed_at < settings["max_epochs"]

    wf = ConfigWorkflow(config_file=DEMO_CONFIGS, workflow_type="train", bundle_root=str(tmp_path), **settings)
    wf.initialize()
    trainer, objects = (
        wf.parser.get_parsed_content("train#trainer"),
        wf.parser.get_parsed_content("train#state_saver#objects"),
    )
    started = []

    @trainer.on(Events.EPOCH_STARTED)
    def compare_with_the_file(engine) -> None:
        if not started:
            started.append(engine.state.epoch)
            for name in ("network", "optimizer", "lr_scheduler", "best_model"):
                assert_same_state(objects[name].state_dict(), saved[name], name)
            assert engine.state.iteration == saved["trainer"]["iteration"]

    wf.run()
    wf.finalize()
    assert started == [killed_at + 1]  # the first epoch it runs is the one after the last saved
    final = torch.load(state_path, weights_only=True)
    assert final["trainer"]["iteration"] == settings["max_epochs"] * epoch_length
    assert final["lr_scheduler"]["last_epoch"] == settings["max_epochs"]
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {settings["max_epochs"] * epoch_length}
    assert final["best_model"]["best_metric"] >= saved["best_model"]["best_metric"]
