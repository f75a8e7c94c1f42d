"""The CPU benchmark end to end on a small trained model: every runtime scored through the bundle's evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, shared_data

pytestmark = pytest.mark.slow


def test_runtimes_are_timed_and_scored_side_by_side_with_eager(tmp_path):
    data_root = shared_data("kvasir-seg").parent
    quality = [sys.executable, str(REPO / "scripts/benchmark_quality.py"), "kvasir", "--arms", "single_pass"]
    quality += ["--epochs", "1", "--max-cases", "3", "--variant", "vit_test", "--image-size", "64"]
    quality += ["--data-root", str(data_root), "--out", str(tmp_path / "quality")]
    assert subprocess.run(quality, cwd=REPO, capture_output=True, timeout=600).returncode == 0
    (run,) = (tmp_path / "quality/kvasir/runs").iterdir()
    # a run whose scoring was interrupted after training is scored by the rerun, not refused as finished
    (run / "result.json").unlink()
    again = subprocess.run(quality, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (run / "result.json").is_file(), again.stderr[-2000:]

    command = [sys.executable, str(REPO / "scripts/benchmark_cpu.py"), "--kvasir-model", str(run / "models/model.pt")]
    command += ["--kvasir-cases", "3", "--threads", "1", "--data-root", str(data_root), "--out", str(tmp_path / "cpu")]
    command += ["--settings", "openvino fp32", "openvino bf16"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "cpu/cpu_benchmark.json").read_text())
    results = report["results"]
    assert report["reference"] == "torch fp32" and results[0]["content_free_slices"] is None  # 2D: no volumes
    assert [r["setting"] for r in results] == ["torch fp32", "openvino fp32", "openvino bf16"]
    assert all(r["cases"] == 3 and r["encoder_slices_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in results)
    assert results[1]["dice"] == pytest.approx(results[0]["dice"], abs=1e-3)  # fp32 export: eager's masks
    assert len(list((tmp_path / "cpu/kvasir/openvino_fp32").glob("*_seg.png"))) == 3
    table = (tmp_path / "cpu/cpu_benchmark.md").read_text()
    assert "1 threads" in table and table.count("| kvasir (3 cases) |") == 3 and "Δ Dice vs torch fp32" in table
