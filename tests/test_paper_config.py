"""bundle/configs/paper.json: SAMed's optimiser, warmup and loss weights on top of train.json."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from monai.bundle import ConfigParser
from monai.handlers import LrScheduleHandler

from samsp_monai import ensure_demo_dataset
from samsp_monai.training.lr_schedules import warmup_poly


def test_warmup_then_polynomial_decay_as_samed():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.005)
    schedule = warmup_poly(optimizer, warmup_iterations=4, max_iterations=20)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.005 * k / 4 for k in (1, 2, 3, 4)] + [0.005 * (1 - j / 20) ** 0.9 for j in range(6)]
    assert lrs == pytest.approx(expected)


def test_paper_config_resolves_samed_settings_on_a_small_network(tmp_path):
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/paper.json")])
    assert parser["image_size"] == 512 and parser["lora_layout"] == "q_v" and parser["lora_rank"] == 4
    data = ensure_demo_dataset(tmp_path / "demo", num_cases=4, num_validation=1)
    small = {"sam_variant": "vit_test", "image_size": 64, "sam_checkpoint": None, "cache_rate": 0.0, "num_workers": 0}
    parser.update(small | {"bundle_root": str(tmp_path), "dataset_dir": data, "max_epochs": 2})
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["weight_decay"] == 0.1 and optimizer.defaults["betas"] == (0.9, 0.999)
    handler = parser.get_parsed_content("train#handlers#0")
    assert isinstance(handler, LrScheduleHandler) and handler.epoch_level is False  # steps every iteration
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005 / 250)  # first warmup step
    iterations = 2 * len(parser.get_parsed_content("train#dataloader"))
    assert handler.lr_scheduler.lr_lambdas[0](250 + iterations // 2) == pytest.approx(0.5**0.9)
    loss = parser.get_parsed_content("loss")
    assert (loss.dice_weight, loss.ce_weight, loss.alpha) == (0.8, 0.2, 1.0)
    network = parser.get_parsed_content("network_def")
    assert type(network.sam.image_encoder.blocks[0].attn.qkv).__name__ == "QVLoRA"
