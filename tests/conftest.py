"""Shared fixtures: small real SAM-SP networks and the read-only data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from samsp_monai import SAMSP

REPO = Path(__file__).resolve().parents[1]
DATA_DIR_VAR = "SAMSP_DATA_DIR"  # where the real data lies, if not in ../shared/data beside the checkout
REQUIRE_DATA_VAR = "SAMSP_REQUIRE_DATA"  # 1: a missing data folder fails the test instead of skipping it (CI)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_samsp(**kwargs) -> SAMSP:
    """A randomly initialised SAM-SP on the `vit_test` variant at 64 px (fast on CPU)."""
    options = {"variant": "vit_test", "img_size": 64, "num_classes": 1, "in_channels": 1}
    return SAMSP(**(options | kwargs))


def shared_data_root() -> Path:
    return Path(os.environ.get(DATA_DIR_VAR) or REPO.parent / "shared" / "data")


def shared_data(name: str) -> Path:
    """The real data folder `name`; skips the test where it is absent, or fails it under SAMSP_REQUIRE_DATA=1."""
    path = shared_data_root() / name
    if not path.is_dir():
        message = f"real data folder {path} is absent (set ${DATA_DIR_VAR} to the folder that holds it)"
        if os.environ.get(REQUIRE_DATA_VAR, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_DATA_VAR}=1 and {message}", pytrace=False)
        pytest.skip(message)
    return path
