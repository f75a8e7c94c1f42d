"""Smoke run of the quality benchmark: every arm trains one epoch on a few real cases and is scored."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_data

SCRIPT = REPO / "scripts" / "benchmark_quality.py"
DEFAULT_ARMS = {
    "kvasir": {"samsp", "single_pass", "samsp_no_distill", "unet", "samsp_gt0.5", "samsp_gt_anneal"},
    "hippocampus": {"samsp", "single_pass", "unet", "samsp_gt_anneal"},
}
DATA = {"kvasir": "kvasir-seg", "hippocampus": "msd-hippocampus"}


def _driver(benchmark: str, out, data_root, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), benchmark, "--epochs", "1", "--max-cases", "3", "--variant", "vit_test"]
    cmd += ["--image-size", "64", "--data-root", str(data_root), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["kvasir", "hippocampus"])
def test_smoke_run_scores_every_arm_writes_tables_and_figures_and_skips_finished_arms(benchmark, tmp_path):
    data_root = shared_data(DATA[benchmark]).parent
    result = _driver(benchmark, tmp_path, data_root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = tmp_path / benchmark
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {r["arm"] for r in runs} == DEFAULT_ARMS[benchmark]
    for run in runs:
        expected_evals = {"final"} if run["arm"] in ("single_pass", "unet") else {"k1", "pass1", "k2", "k3"}
        assert set(run["evals"]) == expected_evals
        for ev in run["evals"].values():
            assert all(math.isfinite(ev["overall"][m]) for m in ("dice", "iou", "hd95_mm"))
            assert 0.0 <= ev["overall"]["dice"] <= 1.0
        assert [h["epoch"] for h in run["history"]] == [1] and run["params"] > 0 and run["train_s_per_epoch"] > 0
        assert {o["kind"] for o in run["overlays"]} <= {"best", "worst"} and run["overlays"]
        figures = [out / "figures" / f"{run['arm']}_seed0_{o['kind']}_{o['case']}.png" for o in run["overlays"]]
        assert all(f.is_file() for f in figures)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r["evals"]) for r in runs)
    assert (out / "learning_curves.png").stat().st_size > 1000
    tables = (out / "results.md").read_text()
    assert all(f"| {arm} |" in tables for arm in DEFAULT_ARMS[benchmark])

    published = tmp_path / "published"
    again = _driver(benchmark, tmp_path, data_root, "--seeds", "0", "1", "--report-only", "--publish", str(published))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete") == len(DEFAULT_ARMS[benchmark])
    assert again.stdout.count("not run, left out of the report") == len(DEFAULT_ARMS[benchmark])
    assert not list((out / "runs").glob("*-seed1-*"))
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]] == [0] * len(runs)
    published = published / benchmark
    links = re.findall(r"\]\(([^)]+\.png)\)", (published / "results.md").read_text())
    assert len(links) == 1 + 2 * len(DEFAULT_ARMS[benchmark])
    assert all((published / link).is_file() for link in links)
    assert sorted(p.name for p in (published / "figures").iterdir()) == sorted(Path(x).name for x in links[1:])
    assert not (published / "runs").exists()
