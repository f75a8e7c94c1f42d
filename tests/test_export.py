"""Merged export: LoRA folded into plain segment_anything weights that reproduce the adapted network."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, small_samsp
from torch import nn

from samsp_monai import SAMSPError, build_sam
from samsp_monai.export import export_merged, load_merged, load_merged_state, merged_export
from samsp_monai.lora import merged_state_dict

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
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    export_merged(tmp_path / "model.pt", ARGS | {"lora_layout": layout}, tmp_path / "merged.pt")
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
    torch.save({"model": small_samsp().state_dict()}, tmp_path / "model.pt")
    with pytest.raises(SAMSPError, match="not a merged SAM-SP export"):
        load_merged(tmp_path / "model.pt")


def test_export_script_builds_the_network_from_the_bundle_config(tmp_path):
    net = _trained("q_v")
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    overrides = ["--sam_variant", "vit_test", "--image_size", "64", "--lora_layout", "q_v"]
    cmd = [sys.executable, str(REPO / "scripts/export_merged.py"), "--model", str(tmp_path / "model.pt")]
    cmd += ["--out", str(tmp_path / "merged.pt"), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "merged.pt") in result.stdout.splitlines()[-1]
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_merged(tmp_path / "merged.pt")(x), net(x), rtol=1e-4, atol=1e-4)
