"""scripts/benchmark_gpu.py --quick: the command a user runs, at tiny size; its tables hold numbers."""

import math
import subprocess
import sys

from conftest import REPO

TRAIN = ["variant", "input", "batch", "precision", "checkpointing", "train images/s", "peak memory (MiB)"]
INFER = ["variant", "input", "batch", "SAM-SP slices/s", "single-pass slices/s", "paired ratio", "parts ratio"]
DATA = ["input", "volumes/batch", "slices/batch", "cache build (s)", "loader slices/s"]


def _tables(stdout: str) -> dict[tuple[str, ...], list[list[str]]]:
    """Markdown tables in the output: header -> rows of cells."""
    tables: dict[tuple[str, ...], list[list[str]]] = {}
    header = None
    for line in stdout.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = tuple(cells)
            tables[header] = []
        elif not set("".join(cells)) <= {"-"}:
            tables[header].append(cells)
    return tables


def test_quick_benchmark_prints_hardware_and_tables_of_numbers(tmp_path):
    cmd = [sys.executable, "scripts/benchmark_gpu.py", "--quick", "--device", "cpu", "--data_root", str(tmp_path)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Hardware: CPU ")
    tables = _tables(result.stdout)
    assert list(tables) == [tuple(TRAIN), tuple(INFER), tuple(DATA)]

    train = tables[tuple(TRAIN)]
    assert [(r[2], r[3], r[4]) for r in train] == [(b, "fp32", c) for b in ("1", "2") for c in ("off", "on")]
    infer = tables[tuple(INFER)]
    assert [r[2] for r in infer] == ["1", "2"]
    (data,) = tables[tuple(DATA)]
    assert data[:3] == ["64", "2", "16"]  # 2 demo volumes x 8 slices per volume
    numbers = [float(v) for r in train for v in r[5:]] + [float(v) for r in infer for v in r[3:]]
    numbers += [float(v) for v in data[3:]]
    assert all(math.isfinite(v) and v >= 0 for v in numbers)
    assert all(float(r[5]) > 0 for r in train) and all(float(v) > 0 for r in infer for v in r[3:])
    assert "SAM-SP K=1 / single pass:" in result.stdout and "saturating batch" in result.stdout
    assert (REPO / "bundle/demo_data/datalist.json").is_file()
