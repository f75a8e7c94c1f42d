"""A training run's random state survives the training-state file: restored, every generator goes on as before."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd, RandScaleIntensityd

from samsp_monai.training.random_states import RandomStates, randomizable_parts


def pipeline() -> Compose:
    return Compose([RandFlipd(keys="image", prob=0.5), RandScaleIntensityd(keys="image", factors=0.5, prob=0.5)])


def draws(transform: Compose) -> list:
    """What each generator gives next: torch, NumPy, Python, and the transforms on a fixed image."""
    image = torch.arange(16.0).reshape(1, 4, 4)
    outputs = [transform({"image": image.clone()})["image"] for _ in range(4)]
    return [torch.rand(3), np.random.rand(3), random.random(), *outputs]


def test_a_saved_random_state_restored_in_a_new_pipeline_repeats_every_draw() -> None:
    first = pipeline().set_random_state(seed=7)
    draws(first)  # move every generator on from its seed
    buffer = io.BytesIO()
    torch.save(RandomStates(first).state_dict(), buffer)
    expected = draws(first)

    second = pipeline().set_random_state(seed=123)  # a rebuilt pipeline, seeded differently (as at a restart)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    buffer.seek(0)
    RandomStates(second).load_state_dict(torch.load(buffer, weights_only=True))
    got = draws(second)
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert all(torch.equal(g, e) for g, e in zip(got[3:], expected[3:], strict=True))


def test_the_random_parts_are_found_inside_wrapping_transforms_and_a_mismatch_is_refused() -> None:
    transform = pipeline()
    parts = list(randomizable_parts(transform))
    scale = transform.transforms[1]
    assert parts[0] is transform and transform.transforms[0] in parts and scale in parts and scale.scaler in parts
    saved = RandomStates(transform).state_dict()
    with pytest.raises(ValueError, match="covers 4 random transforms, the training pipeline has 2"):
        RandomStates(Compose([RandFlipd(keys="image")])).load_state_dict(saved)
