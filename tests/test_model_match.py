"""Inference refuses a model trained with other network settings, naming the overrides that fix it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow

from samsp_monai.errors import SAMSPError, find_user_error
from samsp_monai.training.checkpoints import network_args

INFERENCE = [str(REPO / "bundle/configs/inference.json")]
TRAINED = {"sam_variant": "vit_test", "image_size": 64}


def save_trained_model(bundle_root: Path, **settings) -> Path:
    """model.pt as BestModelSaver writes it: weights plus the network's recorded construction arguments."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(settings)
    network = parser.get_parsed_content("network_def")
    path = bundle_root / "models/model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": network.state_dict(), "network_args": network_args(network)}, path)
    return path


def initialize(bundle_root: Path, dataset_dir: Path, **overrides) -> None:
    wf = ConfigWorkflow(
        config_file=INFERENCE,
        workflow_type=None,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **overrides,
    )
    wf.initialize()


def test_other_network_settings_are_refused_with_the_overrides_to_pass(tmp_path):
    save_trained_model(tmp_path, **TRAINED, encoder_training="full")
    data = shared_data("msd-hippocampus") / "imagesTr"
    with pytest.raises(Exception) as raised:
        initialize(tmp_path, data, sam_variant="vit_test", image_size=128)
    error = find_user_error(raised.value)
    assert isinstance(error, SAMSPError)
    message = str(error)
    assert "image_size: 64 in the model, 128 here" in message
    assert "encoder_training: 'full' in the model, 'lora' here" in message
    assert "--image_size 64" in message and "--encoder_training 'full'" in message
    assert "sam_variant" not in message  # equal settings are not listed
    assert not (tmp_path / "eval").exists()  # refused before the output folder is claimed


def test_inference_time_settings_may_differ_from_training(tmp_path):
    save_trained_model(tmp_path, **TRAINED)
    data = shared_data("msd-hippocampus") / "imagesTr"
    initialize(tmp_path, data, **TRAINED, iterations=3, empty_box="full_image", self_prompt=False)
