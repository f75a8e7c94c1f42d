"""Every shell command block of the README and the model card, run as written, so a shown command cannot stop
working unnoticed.

The blocks run in document order with bash in the repository, as a reader would paste them, with three changes that
keep the run short and inside a temporary folder:
- `/data/...` (the reader's data), `runs/...` (one folder per document, as two readers would have) and
  `bundle/demo_data` point into the temporary folder; `/data/` holds
  the generated demo data in MSD layout (`Task04_Hippocampus`) and a few of its volumes (`new_volumes`);
- `python` is a shim that runs this interpreter; for `python -m monai.bundle run` it sets tiny settings (one
  epoch, two slices per volume, no loader workers), a temporary `bundle_root` where the command gives none (with
  `--fresh True` for training, as a reader would after the demo), and the demo's small random network in place of
  the real SAM weights where the command does not stack `demo.json`;
- blocks that install packages, start servers, need several processes or a tracking server are not run (listed in
  `SKIPPED`, each with its reason; the multi-process command is covered by test_bundle.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_data

from samsp_monai import ensure_demo_dataset

DOCS = [REPO / "README.md", REPO / "bundle/docs/README.md", REPO / "bundle/docs/method.md"]
SKIPPED = {
    "-m venv": "creates the environment (CI does this itself)",
    "pip install": "installs packages (CI does this itself)",
    "-m pytest": "the test suite itself",
    "source .venv/bin/activate": "changes the reader's shell only",
    "torchrun": "several processes: test_bundle.py runs multi_gpu_train.json",
    "mlflow ui": "starts a server",
    "mlflow server": "starts a server",
    "http://": "needs a running tracking server",
    "download_large_files": "downloads the SAM weights",
    "prepare_monailabel_app.py": "needs requirements-monailabel.txt; test_monailabel_integration.py runs it",
    "benchmark_gpu.py": "a GPU benchmark (minutes); its --quick smoke test runs in test_benchmark_gpu.py",
    "benchmark_cpu.py": "times every runtime on trained models (minutes); test_benchmark_cpu.py runs it on a small one",
}

SHIM = '''#!{python}
"""`python` for the docs test: tiny settings for bundle runs, everything else unchanged."""
import os
import sys

args = sys.argv[1:]
if args[:3] == ["-m", "monai.bundle", "run"]:
    training = args[3:4] == ["training"]
    demo = "demo.json" in " ".join(args)
    given = {{a[2:] for a in args if a.startswith("--")}}
    settings = {{"num_workers": "0"}}
    if not demo:
        settings |= {{"sam_variant": "vit_demo", "encoder_training": "full", "image_size": "64"}}
        if training:
            settings["sam_checkpoint"] = "$None"  # MONAI's runner drops a plain None
    if training:
        settings |= {{"max_epochs": "1", "slices_per_volume": "2"}}
    if demo and "demo_data_dir" not in given:
        settings["demo_data_dir"] = {root!r} + "/demo_data"
    if "bundle_root" not in given:
        settings["bundle_root"] = {root!r}
        if training:
            settings["fresh"] = "True"
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("--") and arg[2:] in settings:
            skip = True
        else:
            kept.append(arg)
    args = kept + [x for k, v in settings.items() for x in ("--" + k, v)]
os.execv({python!r}, [{python!r}, *args])
'''


def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


def localise(block: str, tmp: Path, runs: str = "runs") -> str:
    """Point the reader's folders into `tmp` (`runs/` into `tmp/<runs>/`), and `.venv/bin/python` at the shim."""
    block = block.replace(".venv/bin/python", "python").replace("$PWD/runs/", f"{tmp}/{runs}/")
    block = re.sub(r"(?<=[\s=])runs/", f"{tmp}/{runs}/", block)
    return block.replace("/data/", f"{tmp}/data/").replace("bundle/demo_data", f"{tmp}/bundle/demo_data")


def skip_reason(command: str) -> str | None:
    return next((reason for marker, reason in SKIPPED.items() if marker in command), None)


def runnable_part(block: str) -> str | None:
    """The block without its `&&`-joined commands that are skipped; None when nothing runnable is left."""
    lines = block.replace("\\\n", " ").splitlines()
    kept = [" && ".join(c for c in line.split(" && ") if skip_reason(c) is None) for line in lines]
    text = "\n".join(kept)
    return text if "python" in text and skip_reason(text) is None else None


def test_every_block_is_either_run_or_skipped_for_a_stated_reason():
    blocks = [b for doc in DOCS for b in shell_blocks(doc)]
    runnable = [runnable_part(b) for b in blocks if runnable_part(b) is not None]
    assert len(runnable) >= 11, "fewer runnable command blocks than expected: did a block lose its ```bash fence?"
    assert runnable[0].startswith(".venv/bin/python -m monai.bundle run training"), runnable[0]  # the Quick start


@pytest.mark.slow
def test_readme_and_model_card_commands_run_as_written(tmp_path):
    data = tmp_path / "data"
    ensure_demo_dataset(data / "Task04_Hippocampus")
    (data / "new_volumes").mkdir()
    for image in sorted((data / "Task04_Hippocampus/imagesTr").iterdir())[:2]:
        shutil.copy(image, data / "new_volumes" / image.name)
    copy_kvasir_sample(data / "kvasir-seg")
    (tmp_path / "runs").mkdir()
    shim = tmp_path / "bin/python"
    shim.parent.mkdir()
    shim.write_text(SHIM.format(python=sys.executable, root=str(tmp_path / "bundle")))
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    untracked = untracked_files()
    for doc in DOCS:
        runs = "runs" if doc == DOCS[0] else f"runs_{doc.parent.name}_{doc.stem}"  # each document's own outputs
        (tmp_path / runs).mkdir(exist_ok=True)
        for block in shell_blocks(doc):
            if runnable_part(block) is None:
                continue
            command = localise(runnable_part(block), tmp_path, runs)
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", command],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert done.returncode == 0, f"{doc.name}:\n{block}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert sorted(p.name for p in (tmp_path / "runs/demo_predictions").iterdir())[:1] == ["demo_000_seg.nii.gz"]
    assert len(list((tmp_path / "data/predictions").glob("*_seg.nii.gz"))) == 2
    assert (tmp_path / "data/eval/metrics_summary.json").is_file()
    assert (tmp_path / "runs/ablation/samsp_runs.csv").read_text().count("\n") >= 3  # header and two runs
    assert (tmp_path / "runs/hippocampus_datalist.json").is_file()
    assert (tmp_path / "runs/one_case/overlays/demo_000.png").is_file()  # single-file inference with overlays
    assert (tmp_path / "runs/demo_eval/metrics_summary.json").is_file()  # the demo evaluation's stacking order
    assert len(json.loads((tmp_path / "runs/hippocampus_small.json").read_text())["training"]) < 6  # --limit
    assert (tmp_path / "runs/unet/models/model.pt").is_file()  # the table's recommendation without weights
    assert len(list((tmp_path / "runs/kvasir_predictions").glob("*_seg.png"))) == 8  # the 2D fine-tuning example
    assert untracked_files() == untracked, "a documented command left files in the repository"


def copy_kvasir_sample(target: Path, per_split: int = 4) -> None:
    """A few real Kvasir-SEG images, masks and split files, for the documented 2D commands (`/data/kvasir-seg`)."""
    source = shared_data("kvasir-seg")
    for split in ("train", "val"):
        stems = (source / f"{split}.txt").read_text().split()[:per_split]
        (target / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (target / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for folder in ("images", "masks"):
            (target / folder).mkdir(exist_ok=True)
            for stem in stems:
                shutil.copy(source / folder / f"{stem}.jpg", target / folder / f"{stem}.jpg")


def untracked_files() -> set[str]:
    """Files git would offer to add (ignored ones excluded): what a documented command must not leave behind."""
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(listed.stdout.splitlines())
