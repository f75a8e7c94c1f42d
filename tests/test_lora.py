"""LoRA layouts and target matching on real segment_anything image encoders."""

import pytest
import torch
from conftest import small_samsp
from peft.tuners.lora import LoraLayer
from torch import nn

from samsp_monai import SAMSPError, build_sam
from samsp_monai.model.lora import QVLoRA, adapt_encoder, resolve_targets


def _encoder():
    return build_sam("vit_test", 64).image_encoder


def test_proj_target_adapts_attention_projections_not_the_patch_embedding():
    encoder = adapt_encoder(_encoder(), targets=["proj"])
    assert isinstance(encoder.patch_embed.proj, nn.Conv2d) and not isinstance(encoder.patch_embed.proj, LoraLayer)
    assert all(isinstance(block.attn.proj, LoraLayer) for block in encoder.blocks)
    assert not any(isinstance(block.attn.qkv, LoraLayer) for block in encoder.blocks)


def test_targets_match_module_path_suffixes_at_dot_boundaries():
    encoder = _encoder()
    depth = len(encoder.blocks)
    assert resolve_targets(encoder, ["attn.qkv"]) == [f"blocks.{i}.attn.qkv" for i in range(depth)]
    assert resolve_targets(encoder, ["mlp.lin1", "qkv"]) == [f"blocks.{i}.mlp.lin1" for i in range(depth)] + [
        f"blocks.{i}.attn.qkv" for i in range(depth)
    ]
    with pytest.raises(SAMSPError, match=r"'kv' matches no Linear layer.*attn\.qkv"):
        resolve_targets(encoder, ["kv"])  # a substring of qkv, not a path suffix


def test_q_v_layout_adapts_q_and_v_separately_and_leaves_k_alone():
    encoder = adapt_encoder(_encoder(), targets=["qkv"], layout="q_v", rank=2, alpha=4)
    qkv = encoder.blocks[0].attn.qkv
    assert isinstance(qkv, QVLoRA) and qkv.scaling == 2.0 and qkv.lora_q_A.weight.shape == (2, 32)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.qkv.lora_{w}_{ab}.weight" for i in range(2) for w in "qv" for ab in "AB"}
    x = torch.randn(5, 32)
    base = qkv.base_layer(x)
    torch.testing.assert_close(qkv(x), base)  # B starts at zero: the adapter starts as the identity
    for b in (qkv.lora_q_B, qkv.lora_v_B):
        nn.init.normal_(b.weight)
    out = qkv(x)
    q_delta = 2.0 * x @ qkv.lora_q_A.weight.T @ qkv.lora_q_B.weight.T
    v_delta = 2.0 * x @ qkv.lora_v_A.weight.T @ qkv.lora_v_B.weight.T
    torch.testing.assert_close(out[:, :32], base[:, :32] + q_delta)
    torch.testing.assert_close(out[:, 32:64], base[:, 32:64])
    torch.testing.assert_close(out[:, 64:], base[:, 64:] + v_delta)


def test_q_v_layout_refuses_a_non_qkv_target():
    with pytest.raises(SAMSPError, match="fused qkv Linear"):
        adapt_encoder(_encoder(), targets=["proj"], layout="q_v")


def test_q_v_layout_trains_through_the_network():
    net = small_samsp(lora_layout="q_v").train()
    out = net(torch.rand(2, 1, 64, 64))
    (out.final.sum() + out.first.sum()).backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad and "image_encoder" in n}
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "_B." in n)
