"""Inference refuses a model trained with other network or preprocessing settings, naming the overrides that fix it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow

from samsp_monai.errors import SAMSPError, find_user_error
from samsp_monai.model_file import save_model
from samsp_monai.training.checkpoints import network_args

INFERENCE = [str(REPO / "bundle/configs/inference.json")]
TRAINED = {"sam_variant": "vit_test", "image_size": 64}


def save_trained_model(bundle_root: Path, **settings) -> Path:
    """model.pt and model.json as BestModelSaver writes them: weights, construction arguments, pixel settings."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(settings)
    network = parser.get_parsed_content("network_def")
    path = bundle_root / "models/model.pt"
    details = {"epoch": 1, "metric_name": "val_mean_dice", "metric_value": 0.5}
    save_model(path, network.state_dict(), network_args(network), parser.get_parsed_content("settings"), details)
    return path


def refusal(bundle_root: Path, **overrides) -> str:
    """The one-line message inference initialisation stops with."""
    data = shared_data("msd-hippocampus") / "imagesTr"
    with pytest.raises(Exception) as raised:
        initialize(bundle_root, data, **overrides)
    error = find_user_error(raised.value)
    assert isinstance(error, SAMSPError), raised.value
    assert not (bundle_root / "eval").exists()  # refused before the output folder is claimed
    return str(error)


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


def test_a_ct_setting_on_an_mr_trained_model_is_refused_before_any_image_is_read(tmp_path):
    """The issue's case: `--modality CT` on an MR-trained model dropped Dice from 0.57 to 0.02 without a word."""
    save_trained_model(tmp_path, **TRAINED)
    message = refusal(tmp_path, **TRAINED, modality="CT")
    assert "modality: 'MR' in the model, 'CT' here" in message and "--modality 'MR'" in message
    assert "ct_window" not in message  # the window only matters for CT, and is not what differs


@pytest.mark.parametrize(
    ("trained", "given", "listed", "fix"),
    [
        ({"slice_axis": 2}, {"slice_axis": 0}, "slice_axis: 2 in the model, 0 here", "--slice_axis 2"),
        ({"spacing": [1, 1, 2]}, {}, "spacing: [1, 1, 2] in the model, None here", '--spacing "[1, 1, 2]"'),
        (
            {"modality": "CT", "ct_window": [-100, 200]},
            {"modality": "CT"},
            "ct_window: [-100, 200] in the model, [-160, 240] here",
            '--ct_window "[-100, 200]"',
        ),
        (
            {"class_names": {"1": "head", "2": "tail"}},
            {},
            "class_names: {'1': 'head', '2': 'tail'} in the model",
            """--class_names "{'1': 'head', '2': 'tail'}\"""",
        ),
    ],
)
def test_each_setting_that_changes_pixels_is_compared(tmp_path, trained, given, listed, fix):
    save_trained_model(tmp_path, **TRAINED, **trained)
    message = refusal(tmp_path, **TRAINED, **given)
    assert listed in message and fix in message


def test_the_same_settings_in_another_spelling_are_accepted(tmp_path):
    """Lists and tuples, 'mr' and 'MR', an unused CT window: the pixels are the same, so is the answer."""
    save_trained_model(tmp_path, **TRAINED, spacing=(1.0, 1.0, 2.0))
    data = shared_data("msd-hippocampus") / "imagesTr"
    initialize(tmp_path, data, **TRAINED, spacing=[1.0, 1.0, 2.0], modality="mr", ct_window=[-1000, 1000])
