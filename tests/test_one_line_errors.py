"""Faults of the environment end in one line naming the file or setting and what to do, and fast: an unknown or
unwritable MLflow store, a GPU that is not there, a read-only bundle_root, a full disk while training."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from test_inference_integrity import INFERENCE, run_workflow, save_model, user_message
from test_outputs import hippocampus_inputs, limit_file_size, read_only_folder  # noqa: F401 (a fixture)

from samsp_monai import ensure_demo_dataset
from samsp_monai.errors import SAMSPError
from samsp_monai.training.tracking import require_usable

DEMO_TRAINING = f"['{REPO / 'bundle/configs/train.json'}','{REPO / 'bundle/configs/demo.json'}']"


def demo_training(bundle_root, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", DEMO_TRAINING]
    return cmd + ["--bundle_root", str(bundle_root), "--max_epochs", "1", "--num_workers", "0", *extra]


def test_an_unknown_tracking_uri_scheme_is_one_line_before_training(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        demo_training(tmp_path / "bundle", "--tracking", "mlflow", "--tracking_uri", "foo://somewhere"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert result.stderr.count("samsp-monai error: --tracking_uri foo://somewhere: MLflow knows no store of the ") == 1
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert not (tmp_path / "bundle/models").exists()
    assert time.monotonic() - started < 120


def test_an_mlflow_store_on_a_read_only_file_system_fails_at_once(read_only_folder):  # noqa: F811
    uri = f"sqlite:///{read_only_folder}/mlruns.db"
    started = time.monotonic()
    with pytest.raises(SAMSPError) as raised:
        require_usable(uri)
    assert time.monotonic() - started < 1  # MLflow itself retries for about 100 s
    assert str(raised.value).startswith(f"MLflow store {uri} cannot be written (Read-only file system)") or (
        "Permission denied" in str(raised.value)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda is right")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path):
    inputs = hippocampus_inputs(tmp_path / "in", cases=())
    save_model(tmp_path, seed=0)
    message = user_message(run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs), device="cuda")
    assert message.startswith("--device cuda: no usable CUDA GPU here (torch ")
    assert "pass --device cpu, or leave out --device" in message
    assert not (tmp_path / "eval").exists()


def test_a_read_only_bundle_root_is_one_line(tmp_path, read_only_folder):  # noqa: F811
    data = ensure_demo_dataset(str(tmp_path / "demo_data"))
    result = subprocess.run(
        demo_training(read_only_folder, "--dataset_dir", str(data)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert f"samsp-monai error: {read_only_folder}/models cannot be written (" in result.stderr, result.stderr[-2000:]
    assert "choose a writable --bundle_root" in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_while_training_is_one_line_and_leaves_no_partial_model(tmp_path):
    data = ensure_demo_dataset(str(tmp_path / "demo_data"))
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        demo_training(bundle, "--dataset_dir", str(data)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size(300_000),  # the demo model.pt is about 360 kB
    )
    assert result.returncode == 1
    assert f"samsp-monai error: {bundle}/models/model.pt: could not be written (" in result.stderr, result.stderr[
        -2000:
    ]
    assert "the previous model.pt, if any, is unchanged. Free disk space" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (bundle / "models/model.pt").exists()
    assert not list(bundle.rglob("*.tmp"))
