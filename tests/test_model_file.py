"""model.pt in the model zoo's form (a plain state dict) with its record in model.json: MONAI's own tools get the
trained weights, old nested files keep working, and a file that is no model is refused in one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import pytest
import torch
from bad_files import truncated
from conftest import REPO, shared_data
from monai.bundle import ConfigWorkflow

from samsp_monai import SAMSP, SAMSPError, build_sam
from samsp_monai.model_file import load_model, sidecar_path
from samsp_monai.serving.model_match import check_model_matches
from samsp_monai.serving.serving_bundle import inference_config, write_json

CONFIGS = REPO / "bundle/configs"
TINY = {"sam_variant": "vit_test", "image_size": 64, "max_epochs": 1, "slices_per_volume": 2}


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory) -> Path:
    """`<dir>/samsp` laid out as a model-zoo bundle: the demo trained for one epoch (vit_test, 64 px) into its
    `models/`, and `configs/inference.json` written for that model, as the zoo ships a bundle's configs."""
    root = tmp_path_factory.mktemp("zoo") / "samsp"
    demo = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    wf = ConfigWorkflow(config_file=demo, workflow_type="train", bundle_root=str(root), logging_file=False, **TINY)
    wf.initialize()
    wf.run()
    wf.finalize()
    model = load_model(root / "models/model.pt")
    files = [CONFIGS / "inference.json", CONFIGS / "demo.json"]
    write_json(
        root / "configs/inference.json",
        inference_config(files, {"bundle_root": str(root)}, model.network_args, model.settings),
    )
    shutil.copy2(CONFIGS / "metadata.json", root / "configs/metadata.json")
    return root


def trained_weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models/model.pt", weights_only=True)


def assert_same_weights(got: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    assert got.keys() == trained.keys()
    assert all(torch.equal(got[k].cpu(), v) for k, v in trained.items())


def test_model_pt_is_the_plain_state_dict_and_model_json_records_the_rest(zoo_bundle):
    weights = trained_weights(zoo_bundle)
    record = json.loads((zoo_bundle / "models/model.json").read_text())
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert record["format"] == "samsp-model-1" and record["epoch"] == 1 and record["metric_name"] == "val_mean_dice"
    assert record["network_args"]["variant"] == "vit_test" and record["network_args"]["encoder_training"] == "full"
    assert record["settings"] == {
        "modality": "MR",
        "ct_window": None,
        "slice_axis": 2,
        "spacing": None,
        "in_channels": 1,
        "image_size": 64,
        "geometry": "stretch",
        "num_classes": 2,
        "class_names": {"1": "anterior", "2": "posterior"},
    }
    SAMSP(**record["network_args"]).load_state_dict(weights, strict=True)


def test_monai_bundle_load_and_ckpt_export_get_the_trained_weights(zoo_bundle, tmp_path):
    """MONAI's loader with its defaults, and the zoo's export command without --key_in_ckpt."""
    weights = trained_weights(zoo_bundle)
    net = monai.bundle.load(
        name=zoo_bundle.name, bundle_dir=str(zoo_bundle.parent), workflow_type="inference", device="cpu"
    )
    assert isinstance(net, SAMSP)
    assert_same_weights(net.state_dict(), weights)

    exported = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported)]
    cmd += [
        "--ckpt_file",
        str(zoo_bundle / "models/model.pt"),
        "--meta_file",
        str(zoo_bundle / "configs/metadata.json"),
    ]
    cmd += ["--config_file", str(zoo_bundle / "configs/inference.json"), "--use_trace", "True"]
    cmd += ["--input_shape", "[1, 1, 64, 64]"]  # scripting fails inside segment_anything; a trace works
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    traced = torch.jit.load(exported).state_dict()
    assert set(traced) - set(weights) == {"sam.pixel_mean", "sam.pixel_std"}  # constants, not weights
    assert_same_weights({k: v for k, v in traced.items() if k in weights}, weights)


def test_an_old_nested_model_works_says_how_to_convert_and_converts(zoo_bundle, tmp_path, caplog):
    record = json.loads((zoo_bundle / "models/model.json").read_text())
    weights = trained_weights(zoo_bundle)
    old = tmp_path / "models/model.pt"
    old.parent.mkdir()
    torch.save({"model": weights, "val_mean_dice": 0.25, "epoch": 7, "network_args": record["network_args"]}, old)
    with caplog.at_level(logging.WARNING, logger="samsp_monai.model_file"):
        model = load_model(old)
        load_model(old)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "samsp_monai.model_file"]  # said once
    assert f"python scripts/convert_model.py {old}" in warning
    assert model.network_args == record["network_args"] and model.record["metric_value"] == 0.25
    assert_same_weights(model.state_dict, weights)

    cmd = [sys.executable, "scripts/convert_model.py", str(old), "--config_file"]
    cmd += [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    converted = json.loads(sidecar_path(old).read_text())
    assert_same_weights(torch.load(old, weights_only=True), weights)
    assert converted["epoch"] == 7 and converted["metric_name"] == "val_mean_dice"
    # the pixel settings come from the configs given, the network ones from what the old file recorded
    assert converted["settings"] == record["settings"] and converted["network_args"] == record["network_args"]


def test_a_model_json_beside_another_model_pt_is_refused_naming_both(zoo_bundle, tmp_path):
    other = tmp_path / "model.pt"
    weights = trained_weights(zoo_bundle)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, other)
    shutil.copy2(zoo_bundle / "models/model.json", tmp_path / "model.json")
    with pytest.raises(SAMSPError) as refused:
        load_model(other)
    message = str(refused.value)
    assert f"{tmp_path / 'model.json'} describes another model file than {other}" in message
    assert "copy the two files together" in message and "\n" not in message


def test_a_plain_model_pt_alone_works_with_the_configs_settings_and_one_warning(zoo_bundle, tmp_path, caplog):
    mine = tmp_path / "model.pt"
    shutil.copy2(zoo_bundle / "models/model.pt", mine)
    network = SAMSP(**load_model(zoo_bundle / "models/model.pt").network_args)
    with caplog.at_level(logging.WARNING, logger="samsp_monai.model_file"):
        check_model_matches(mine, network, {"modality": "CT", "image_size": 512})  # nothing recorded to compare
    assert [r.getMessage() for r in caplog.records if r.name == "samsp_monai.model_file"] == [
        f"{mine} has no model.json beside it: its network and preprocessing settings are taken from the config, "
        "unchecked"
    ]


BAD_FILES = {
    "empty": (lambda root: b"", "the file is empty (0 bytes)"),
    "truncated": (None, "not a readable PyTorch model file"),
    "random": (lambda root: os.urandom(4096), "not a readable PyTorch model file"),
    "training_state": (
        lambda root: (root / "models/training_state.pt").read_bytes(),
        "not a trained model; use the model.pt that training wrote beside it",
    ),
    "sam_checkpoint": (None, "this is a segment_anything checkpoint (the base SAM weights), not a trained model"),
    "other_network": (None, "missing (e.g. 'sam.image_encoder.pos_embed'); 2 unexpected (e.g. 'weight')); pass the"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_file_that_is_no_model_of_this_network_is_one_line(zoo_bundle, tmp_path, kind):
    make, expected = BAD_FILES[kind]
    path = tmp_path / "model.pt"
    if kind == "sam_checkpoint":  # an official checkpoint is a plain segment_anything state dict
        torch.save(build_sam("vit_test", 64, 2).state_dict(), path)
    elif kind == "truncated":  # as an interrupted copy leaves it
        truncated(zoo_bundle / "models/model.pt", path)
    elif kind == "other_network":
        torch.save(torch.nn.Linear(2, 1).state_dict(), path)
    else:
        path.write_bytes(make(zoo_bundle))
    network = SAMSP(**load_model(zoo_bundle / "models/model.pt").network_args)
    with pytest.raises(SAMSPError) as refused:
        check_model_matches(path, network, {})
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_inference_on_a_truncated_model_says_so_in_one_line_without_a_traceback(zoo_bundle, tmp_path):
    broken = tmp_path / "model.pt"
    truncated(zoo_bundle / "models/model.pt", broken)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(zoo_bundle / "configs/inference.json")]
    cmd += ["--ckpt_path", str(broken), "--dataset_dir", str(shared_data("msd-hippocampus") / "imagesTs")]
    cmd += ["--output_dir", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("samsp-monai error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"samsp-monai error: {broken}: not a readable PyTorch model file ("
    )
    assert not (tmp_path / "out").exists()


def test_a_decoder_with_the_old_class_token_count_is_named_as_such(tmp_path):
    """samsp-monai before 0.3 kept N + 1 mask tokens; the decoder now keeps SAM's four plus one per further class."""
    from conftest import small_samsp

    from samsp_monai.model_file import check_fits

    old_two_class_layout = small_samsp(num_classes=1).state_dict()  # 4 tokens, as an old 3-class model had
    path = tmp_path / "model.pt"
    torch.save(old_two_class_layout, path)
    with pytest.raises(SAMSPError, match=r"4 mask tokens where this network has 6: .*before 0.3.*retrain it"):
        check_fits(load_model(path), small_samsp(num_classes=3))
