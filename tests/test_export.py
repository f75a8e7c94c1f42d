"""Merged export: LoRA folded into plain segment_anything weights that reproduce the adapted network."""

import importlib.util
import subprocess
import sys

import nibabel as nib
import pytest
import torch
from conftest import REPO, shared_data, small_samsp
from torch import nn

from samsp_monai import SAMSPError, build_sam
from samsp_monai.model.lora import merged_state_dict
from samsp_monai.model_file import load_model, save_model
from samsp_monai.serving.export import (
    export_merged,
    export_program,
    load_merged,
    load_merged_state,
    merged_export,
    save_program,
)

ARGS = {"variant": "vit_test", "img_size": 64, "num_classes": 2, "in_channels": 1}


def _trained(layout: str):
    """A LoRA network whose adapters carry a non-zero update (B starts at zero, as after no training)."""
    net = small_samsp(num_classes=2, lora_layout=layout)
    for name, p in net.named_parameters():
        if "lora_" in name and ("lora_B" in name or "_B." in name):
            nn.init.normal_(p, std=0.5)
    return net.eval()


@pytest.mark.parametrize("layout", ["qkv", "q_v"])
def test_merged_weights_reproduce_the_adapted_network_without_adapters(layout, tmp_path):
    net = _trained(layout)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    export_merged(load_model(tmp_path / "model.pt"), ARGS | {"lora_layout": layout}, tmp_path / "merged.pt")
    content = torch.load(tmp_path / "merged.pt", weights_only=True)
    plain = build_sam("vit_test", 64, 2)
    plain.load_state_dict(content["sam"])  # strict: exactly segment_anything's key layout
    base = net.sam.image_encoder.blocks[0].attn.qkv.base_layer.weight
    assert not torch.allclose(content["sam"]["image_encoder.blocks.0.attn.qkv.weight"], base)  # update folded in
    merged = load_merged(tmp_path / "merged.pt")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    x = torch.rand(3, 1, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), net(x), rtol=1e-4, atol=1e-4)


def test_merging_never_applies_an_update_twice(tmp_path):
    net = _trained("qkv")
    first = merged_export(net, ARGS)
    again = merged_state_dict(net.sam)  # the adapted network is left unchanged by a merge
    assert all(torch.equal(first["sam"][k], again[k]) for k in first["sam"])
    with pytest.raises(SAMSPError, match="already folded"):
        load_merged_state(small_samsp(num_classes=2), first["sam"])
    unadapted = load_merged_state(small_samsp(num_classes=2, encoder_training="frozen"), first["sam"])
    remerged = merged_state_dict(unadapted.sam)  # merging a merged network is the identity
    assert remerged.keys() == first["sam"].keys()
    assert all(torch.equal(first["sam"][k], remerged[k]) for k in remerged)


def test_a_training_checkpoint_is_not_a_merged_file(tmp_path):
    torch.save(small_samsp().state_dict(), tmp_path / "model.pt")
    with pytest.raises(SAMSPError, match="not a merged SAM-SP export"):
        load_merged(tmp_path / "model.pt")


def _hippocampus_slices(count: int) -> torch.Tensor:
    """`count` middle axial slices (count, 1, H, W) of a real MR volume, scaled to [0, 1] by its percentiles."""
    volume = torch.from_numpy(nib.load(shared_data("msd-hippocampus") / "imagesTr/hippocampus_001.nii.gz").get_fdata())
    low, high = torch.quantile(volume, 0.005), torch.quantile(volume, 0.995)
    volume = ((volume - low) / (high - low)).clamp(0, 1).float()
    middle = volume.shape[2] // 2
    return volume[..., middle : middle + count].permute(2, 0, 1)[:, None].contiguous()


def test_export_script_writes_merged_weights_and_a_program_that_matches_eager(tmp_path):
    """One command: merged weights plus a torch.export program with dynamic batch (and size, for stretch)."""
    net = _trained("q_v")
    torch.save(net.state_dict(), tmp_path / "model.pt")  # a plain model.pt without model.json: the overrides say
    overrides = ["--sam_variant", "vit_test", "--image_size", "64", "--lora_layout", "q_v"]
    cmd = [sys.executable, str(REPO / "scripts/export_merged.py"), "--model", str(tmp_path / "model.pt")]
    cmd += ["--out", str(tmp_path / "merged.pt"), "--program", str(tmp_path / "model.pt2"), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'merged.pt'}, {tmp_path / 'model.pt2'}" in result.stdout.splitlines()[-1]
    merged = load_merged(tmp_path / "merged.pt")
    program = torch.export.load(tmp_path / "model.pt2").module()
    slices = _hippocampus_slices(3)
    assert slices.shape[-2:] != (64, 64)
    with torch.no_grad():
        for batch in (slices[:1], slices):
            expected = net(batch)
            torch.testing.assert_close(merged(batch), expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(program(batch), merged(batch), rtol=1e-5, atol=1e-5)
        assert program(torch.rand(2, 1, 64, 80)).shape == (2, 3, 64, 80)


@pytest.mark.slow
def test_program_with_sam_geometry_is_fixed_to_its_input_size(tmp_path):
    slices = _hippocampus_slices(3)
    merged = small_samsp(num_classes=2, encoder_training="frozen", geometry="sam").eval()
    program = torch.export.load(save_program(export_program(merged, slices[:2]), tmp_path / "p.pt2")).module()
    with torch.no_grad():
        for batch in (slices[:1], slices):
            torch.testing.assert_close(program(batch), merged(batch), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="shape|size|guard|Guard"):
        program(torch.rand(1, 1, 40, 40))


def test_a_lora_network_is_not_exported():
    with pytest.raises(SAMSPError, match="merged network"):
        export_program(small_samsp(), torch.rand(1, 1, 64, 64))


def export_script():
    spec = importlib.util.spec_from_file_location("export_merged_script", REPO / "scripts/export_merged.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_script_rebuilds_a_model_trained_with_overrides_from_its_record(tmp_path, capsys):
    """No overrides needed (it used to fail with 183 lines of size mismatches); contradicting ones are refused."""
    net = _trained("q_v")
    model = tmp_path / "model.pt"
    save_model(model, net.state_dict(), net.network_args, None, {"epoch": 1})
    script = export_script()
    script.main(["--model", str(model), "--out", str(tmp_path / "merged.pt")])
    assert capsys.readouterr().out.startswith(f"merged LoRA of {model} into plain SAM weights")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_merged(tmp_path / "merged.pt")(x), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(SAMSPError) as refused:
        script.main(["--model", str(model), "--out", str(tmp_path / "again.pt"), "--image_size", "128"])
    assert str(refused.value) == (
        f"{model} records other network settings than the overrides given (image_size: 64 in the model, 128 given); "
        "drop those overrides (the model's record is used) or pass --image_size 64"
    )
    assert not (tmp_path / "again.pt").exists()
