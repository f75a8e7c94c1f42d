"""The real-data lookup: absent data skips locally, and fails under SAMSP_REQUIRE_DATA=1 (CI) naming the folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, shared_data

TEST = "tests/test_pipeline.py::test_msd_validation_keeps_whole_volumes_scaled_to_unit_range"


def test_absent_data_fails_a_real_test_run_under_require_data_and_names_the_folder(tmp_path):
    env = {**os.environ, "SAMSP_DATA_DIR": str(tmp_path), "SAMSP_REQUIRE_DATA": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    assert f"real data folder {tmp_path / 'msd-hippocampus'} is absent" in result.stdout
    assert "1 failed" in result.stdout


@pytest.mark.parametrize("require", ["", "0"])
def test_absent_data_skips_without_require_data(tmp_path, monkeypatch, require):
    monkeypatch.setenv("SAMSP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAMSP_REQUIRE_DATA", require)
    with pytest.raises(pytest.skip.Exception, match=str(tmp_path / "kvasir-seg")):
        shared_data("kvasir-seg")


def test_present_data_is_found_under_the_configured_folder(tmp_path, monkeypatch):
    (tmp_path / "kvasir-seg").mkdir()
    monkeypatch.setenv("SAMSP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAMSP_REQUIRE_DATA", "1")
    assert shared_data("kvasir-seg") == tmp_path / "kvasir-seg"
