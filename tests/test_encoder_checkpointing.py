"""Activation checkpointing of the encoder blocks: same loss, same gradients, same state-dict keys."""

import pytest
import torch
from conftest import small_samsp

from samsp_monai import SAMSPError, SAMSPLoss


def _loss_and_grads(checkpointing: bool, encoder_training: str) -> tuple[torch.Tensor, dict, int]:
    """Loss, gradients, and the bytes autograd stored for backward during the forward pass."""
    torch.manual_seed(0)
    net = small_samsp(num_classes=2, encoder_training=encoder_training, encoder_checkpointing=checkpointing).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 1, 64, 64, generator=g), torch.randint(0, 3, (2, 1, 64, 64), generator=g)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = SAMSPLoss()(net(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved[0]


@pytest.mark.parametrize("encoder_training", ["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(encoder_training):
    loss, grads, saved = _loss_and_grads(False, encoder_training)
    loss_ckpt, grads_ckpt, saved_ckpt = _loss_and_grads(True, encoder_training)
    assert saved_ckpt < saved  # block internals are recomputed in backward instead of stored
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    assert any("image_encoder.blocks" in n for n in grads)  # the encoder is trained through the checkpoints
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_keeps_state_dict_keys_and_is_off_without_gradients():
    plain = small_samsp()
    ckpt = small_samsp(encoder_checkpointing=True)
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_checkpointing_flag_must_be_a_real_bool():
    with pytest.raises(SAMSPError, match="'encoder_checkpointing' must be True or False"):
        small_samsp(encoder_checkpointing="false")
