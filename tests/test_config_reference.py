"""The configuration reference is generated from the settings schema and stays complete and current."""

from __future__ import annotations

import json
import runpy

import pytest
from conftest import REPO

from samsp_monai.training.settings import MEANINGS, SCHEMA, meaning_of

SCRIPT = runpy.run_path(str(REPO / "scripts/config_reference.py"))


@pytest.mark.parametrize("config", ["train", "inference", "evaluate"])
def test_every_top_level_config_key_has_a_meaning(config):
    keys = json.loads((REPO / f"bundle/configs/{config}.json").read_text())
    assert [key for key in keys if meaning_of(key) is None] == []


def test_every_checked_setting_is_documented_and_no_meaning_is_listed_twice():
    assert [key for key in SCHEMA if meaning_of(key) is None] == []
    listed = [key for group in MEANINGS.values() for key in group]
    assert len(listed) == len(set(listed))


def test_the_committed_reference_is_what_the_code_generates():
    page = (REPO / "bundle/docs/config_reference.md").read_text()
    assert page == SCRIPT["render"](), "run python scripts/config_reference.py"
    assert "| `image_size` | `256` | whole number >= 16, multiple of 16 |" in page
    assert "| `num_overlays` | `0` (inference); `4` (evaluate) |" in page
