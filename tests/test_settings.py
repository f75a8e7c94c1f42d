"""Settings are checked before any heavy work: wrong types, values out of range and unknown override keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from monai.bundle import ConfigWorkflow

from samsp_monai.errors import SAMSPError, find_user_error
from samsp_monai.training.settings import check_command_line, command_line_overrides, unknown_keys

CONFIGS = REPO / "bundle/configs"
DEMO = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]


def refusal(config_file: list[str], bundle_root, **override) -> str:
    wf = ConfigWorkflow(config_file=config_file, workflow_type=None, bundle_root=str(bundle_root), **override)
    with pytest.raises(Exception) as caught:
        wf.initialize()
    error = find_user_error(caught.value)
    assert error is not None, f"not a user error: {caught.value!r}"
    return str(error)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"self_prompt": "false"}, "write --self_prompt False"),
        ({"distill": "true"}, "write --distill True"),
        ({"detach_teacher": 0}, "must be True or False, got 0"),
        ({"num_classes": 0}, "'num_classes': must be >= 1, got 0"),
        ({"lora_rank": 0}, "'lora_rank': must be >= 1, got 0"),
        ({"max_epochs": 2.5}, "'max_epochs': must be a whole number, got 2.5"),
        ({"learning_rate": -1e-3}, "'learning_rate': must be > 0.0, got -0.001"),
        ({"learning_rate": "1e-3"}, "'learning_rate': must be a finite number, got '1e-3'"),
        ({"image_size": 100}, "'image_size': must be a multiple of 16, got 100"),
        ({"fg_fraction": 1.5}, "'fg_fraction': must be >= 0.0 and <= 1.0, got 1.5"),
        ({"encoder_training": "lorra"}, "did you mean 'lora'?"),
        ({"slice_axis": 3}, "'slice_axis': must be one of [0, 1, 2], got 3"),
        ({"spacing": [1.0, 1.0]}, "'spacing': must be a list of 3 numbers"),
        ({"ct_window": [240, -160]}, "'ct_window': must be increasing"),
        ({"fresh": "yes"}, "'fresh': must be True or False"),
        ({"num_classes": 3}, "'class_names': names the classes ['1', '2'], but num_classes 3 means the classes"),
        ({"class_names": {"1": "anterior"}}, "names the classes ['1'], but num_classes 2 means the classes ['1', '2']"),
        ({"class_names": {"0": "bg", "1": "a"}, "num_classes": 1}, "names the classes ['0', '1'], but num_classes 1"),
        ({"class_names": ["anterior", "posterior"]}, "'class_names': must map class numbers to names"),
    ],
)
def test_training_refuses_a_wrong_setting_before_any_work(tmp_path, override, expected):
    message = refusal(DEMO, tmp_path, **override)
    assert expected in message
    assert not (tmp_path / "models").exists()


def test_settings_that_work_are_accepted_as_written(tmp_path):
    wf = ConfigWorkflow(
        config_file=DEMO, workflow_type=None, bundle_root=str(tmp_path), modality="ct", lora_alpha=None, spacing=None
    )
    wf.initialize()
    wf.finalize()
    assert not (tmp_path / "models/training.lock").exists()


def test_inference_refuses_the_text_false_for_a_boolean(tmp_path):
    message = refusal([str(CONFIGS / "inference.json")], tmp_path, self_prompt="false", dataset_dir=str(tmp_path))
    assert "setting 'self_prompt': got the text 'false', which would count as true" in message


def test_evaluation_refuses_class_names_that_do_not_fit_the_class_count(tmp_path):
    """The issue's case: `--num_classes 3` with two class names dropped a class from the evaluation CSV silently."""
    evaluate = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
    message = refusal(evaluate, tmp_path, num_classes=3, dataset_dir=str(tmp_path))
    assert "name each class 1..3 once, or set --num_classes to the number of classes named" in message
    assert not (tmp_path / "eval").exists()


def test_unknown_keys_of_the_command_line_and_of_a_users_override_file(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"learning_rate": 0.01, "weight_decai": 0.1}))
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json"), str(mine)]
    found = unknown_keys(files, ["lerning_rate", "max_epochs", "train#dataloader#num_workers", "tracking_uri"])
    assert found == {"lerning_rate": "learning_rate", "weight_decai": "weight_decay"}
    # a key of another workflow's config is unknown to this one: inference's --overwrite means nothing to training
    assert list(unknown_keys([str(CONFIGS / "train.json")], ["overwrite"])) == ["overwrite"]
    evaluate = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
    assert unknown_keys(evaluate, ["eval_split", "datalist_file", "class_names"]) == {}


def test_command_line_is_read_as_monai_bundle_reads_it():
    argv = ["training", "--config_file", "['a.json','b.json']", "--max_epochs=3", "--train#handlers#0#x", "1"]
    assert command_line_overrides(argv) == (["a.json", "b.json"], ["max_epochs", "train#handlers#0#x"])


def test_a_none_on_the_command_line_is_refused_because_monai_drops_it():
    main = str(Path(sys.modules["monai.bundle"].__file__).parent / "__main__.py")
    argv = [main, "run", "training", "--config_file", str(CONFIGS / "train.json"), "--sam_checkpoint", "None"]
    with pytest.raises(SAMSPError, match=r"'sam_checkpoint': MONAI's runner ignores the value None .* '\$None'"):
        check_command_line(argv)
    check_command_line([*argv[:-1], "$None"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--lerning_rate", "0.5"], "setting 'lerning_rate': the config does not define it, so it would be ignored; "),
        (["--self_prompt", "false"], "write --self_prompt False (capital F)"),
    ],
)
def test_command_line_refusal_is_one_short_message_and_writes_nothing(tmp_path, args, expected):
    config = "['bundle/configs/train.json','bundle/configs/demo.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config]
    result = subprocess.run(
        [*cmd, "--bundle_root", str(tmp_path), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "samsp-monai error: setting" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "models").exists()


def test_samsp_error_is_what_the_checks_raise():
    from samsp_monai.training.settings import check_values

    with pytest.raises(SAMSPError, match="'batch_size': must be >= 1, got 0"):
        check_values({"batch_size": 0, "unchecked_key": object()})
