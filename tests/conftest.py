"""Shared fixtures: small real SAM-SP networks and the read-only data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samsp_monai import SAMSP

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_samsp(**kwargs) -> SAMSP:
    """A randomly initialised SAM-SP on the `vit_test` variant at 64 px (fast on CPU)."""
    options = {"variant": "vit_test", "img_size": 64, "num_classes": 1, "in_channels": 1}
    return SAMSP(**(options | kwargs))


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it lies in ../shared/data beside the checkout)")
    return path
