"""The deciding comparison of the quality benchmark: a gap counts only beyond two seed standard deviations."""

from __future__ import annotations

import pytest

from samsp_monai.evaluation.benchmark_report import comparison_table, gap_verdict


def _run(arm: str, seed: int, dice: float) -> dict:
    return {"arm": arm, "seed": seed, "primary_eval": "final", "evals": {"final": {"overall": {"dice": dice}}}}


def test_gap_verdict_uses_twice_the_larger_population_std():
    gap, noise, verdict = gap_verdict([0.60, 0.62, 0.64], [0.50, 0.50, 0.50])
    assert gap == pytest.approx(0.12) and noise == pytest.approx(2 * 0.016330, abs=1e-5) and verdict == "better"
    assert gap_verdict([0.50, 0.50, 0.50], [0.60, 0.62, 0.64])[2] == "worse"
    assert gap_verdict([0.51, 0.56, 0.61], [0.50, 0.50, 0.50])[2] == "within noise"


def test_comparison_table_pairs_seeds_and_needs_three():
    runs = [_run("single_pass", s, 0.5) for s in (0, 1, 2, 3)]
    runs += [_run("samsp_gt", s, d) for s, d in ((0, 0.60), (1, 0.62), (2, 0.64))]
    runs += [_run("unet", s, 0.9) for s in (0, 1)]  # two seeds: not a deciding comparison
    table = comparison_table(runs)
    assert "| samsp_gt | 0,1,2 | +12.00 | 3.27 | better | +10.00, +12.00, +14.00 |" in table
    assert "unet" not in table and "| single_pass |" not in table
    assert comparison_table(runs[:4]) == ""
