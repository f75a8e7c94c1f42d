"""The share of empty pass-1 masks per epoch, from a real trainer loop over a real SAM-SP network."""

import logging

import torch
from conftest import small_samsp
from ignite.engine import Engine, Events

from samsp_monai.training.prompt_stats import EmptyPromptShare


def test_share_of_empty_first_pass_masks_is_published_per_epoch(caplog):
    net = small_samsp(num_classes=2).train()
    batches = [torch.rand(2, 1, 64, 64) for _ in range(3)]
    seen: list[torch.Tensor] = []

    def step(engine, x):
        with torch.no_grad():
            net(x)
        seen.append(net.empty_prompts.clone())

    engine = Engine(step)
    EmptyPromptShare(net).attach(engine)
    shares = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: shares.append(e.state.metrics["train_empty_y0_share"]))
    with caplog.at_level(logging.DEBUG, logger="samsp_monai.training.prompt_stats"):
        engine.run(batches, max_epochs=2)
    per_epoch = [torch.cat(seen[:3]), torch.cat(seen[3:])]
    assert shares == [float(flags.float().mean()) for flags in per_epoch]  # reset between epochs
    assert all(flags.numel() == 12 for flags in per_epoch)
    assert "epoch 2:" in caplog.text and "of 12 image-class pairs; training rule full_image" in caplog.text
