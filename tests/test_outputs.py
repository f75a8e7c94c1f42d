"""What inference writes can be trusted: complete files or none, one file per input, one run per output folder.

Real runs of the bundle's inference command on real volumes: a full disk is a file size limit (RLIMIT_FSIZE) on
the inference process, a kill mid-write is the kernel's SIGXFSZ at that limit, a concurrent run is a second
process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, shared_data
from monai.transforms import LoadImage
from test_inference_integrity import INFERENCE, run_workflow, save_model, user_message
from test_seg_writer import CODES, NAMES

from samsp_monai.atomic import FileWriteError
from samsp_monai.data.seg_writer import write_dicom_seg
from samsp_monai.serving.output_guard import LOCK, MANIFEST, OutputConflictError, output_names, sha256

HIPPOCAMPUS = "msd-hippocampus/imagesTr"


def inference_command(bundle_root: Path, inputs: Path, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        INFERENCE[0],
        "--bundle_root",
        str(bundle_root),
    ]
    return cmd + [
        "--dataset_dir",
        str(inputs),
        "--sam_variant",
        "vit_test",
        "--image_size",
        "64",
        "--num_workers",
        "0",
        "--runtime",  # eager: an exported encoder is written beside the model first, past the tests' file size limit
        "torch",
        *extra,
    ]


def limit_file_size(limit: int):
    """preexec_fn: files of the child may not grow past `limit` bytes; past it, writes fail with EFBIG, as on a
    full disk (Python ignores SIGXFSZ, so the write returns the error instead of the kernel killing it)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def killed_at_the_limit(cmd: list[str]) -> list[str]:
    """`cmd` (a `python -m monai.bundle ...`) with SIGXFSZ restored: the kernel kills the process mid-write."""
    start = "import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); sys.argv = sys.argv[1:]; "
    return [cmd[0], "-c", start + "runpy.run_module('monai.bundle', run_name='__main__')", "monai.bundle", *cmd[3:]]


def hippocampus_inputs(folder: Path, cases: tuple[str, ...] = ("hippocampus_001",), small: bool = True) -> Path:
    """Real hippocampus volumes, plus (with `small`) a 10x10x10 crop whose segmentation stays under 4 kB."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.copy(shared_data(HIPPOCAMPUS) / f"{case}.nii.gz", folder)
    if small:
        image = nib.load(shared_data(HIPPOCAMPUS) / "hippocampus_003.nii.gz")
        nib.save(
            nib.Nifti1Image(np.asanyarray(image.dataobj)[10:20, 20:30, 10:20], image.affine), folder / "small.nii.gz"
        )
    return folder


def complete(path: Path, like: Path) -> bool:
    """The segmentation re-reads with its input's shape."""
    return sitk.ReadImage(str(path)).GetSize() == sitk.ReadImage(str(like)).GetSize()


@pytest.mark.parametrize("ext", [".nii", ".nrrd"])  # MONAI picks nibabel, then ITK (the writer that left 0 bytes)
def test_a_full_disk_fails_the_cases_it_hits_and_leaves_no_partial_file(tmp_path, ext):
    inputs = hippocampus_inputs(tmp_path / "in")
    save_model(tmp_path, seed=0)
    result = subprocess.run(
        inference_command(tmp_path, inputs, "--output_ext", ext),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size(20_000),  # a 35x51x35 label is 62 kB uncompressed
    )
    out = tmp_path / "eval"
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"segmented 1 of 2 cases into {out}" in result.stdout
    assert "samsp-monai error: 1 of 2 cases failed" in result.stderr
    assert f"{out}/hippocampus_001_seg{ext}: the segmentation could not be written (" in result.stderr
    cause = {".nii": "OSError: [Errno 27] File too large", ".nrrd": "fwrite wrote only"}[ext]
    assert cause in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, f"small_seg{ext}"]  # no temporary files, no lock
    assert complete(out / f"small_seg{ext}", inputs / "small.nii.gz")
    recorded = json.loads((out / MANIFEST).read_text())["outputs"]
    assert recorded == {f"small_seg{ext}": sha256(out / f"small_seg{ext}")}


def test_a_run_killed_mid_write_leaves_no_file_under_a_final_name_and_the_rerun_cleans_up(tmp_path):
    inputs = hippocampus_inputs(tmp_path / "in")
    save_model(tmp_path, seed=0)
    out = tmp_path / "eval"
    killed = subprocess.run(
        killed_at_the_limit(inference_command(tmp_path, inputs, "--output_ext", ".nii")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size(20_000),
    )
    assert killed.returncode == -signal.SIGXFSZ
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    cut = [name for name in left if name.startswith(".samsp-writing-")]
    assert len(cut) == 1 and cut[0].endswith("/hippocampus_001_seg.nii"), left  # the file cut by the kill
    assert "hippocampus_001_seg.nii" not in left
    if "small_seg.nii" in left:  # written before the kill: complete
        assert complete(out / "small_seg.nii", inputs / "small.nii.gz")

    rerun = subprocess.run(
        inference_command(tmp_path, inputs, "--output_ext", ".nii"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "left by an interrupted run" in rerun.stdout + rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "hippocampus_001_seg.nii", "small_seg.nii"])
    assert complete(out / "hippocampus_001_seg.nii", inputs / "hippocampus_001.nii.gz")


def test_inputs_sharing_a_stem_get_one_segmentation_each(tmp_path):
    source = shared_data(HIPPOCAMPUS) / "hippocampus_001.nii.gz"
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = sitk.ReadImage(str(source))
    for name, crop in (("case.nii.gz", None), ("case.nii", 30), ("case.nrrd", 25)):
        sitk.WriteImage(image if crop is None else image[:, :, :crop], str(inputs / name))
    save_model(tmp_path, seed=0)
    run_workflow(INFERENCE, tmp_path, dataset_dir=str(inputs))
    out = tmp_path / "eval"
    written = {
        "case_nii_gz_seg.nii.gz": "case.nii.gz",
        "case_nii_seg.nii.gz": "case.nii",
        "case_nrrd_seg.nii.gz": "case.nrrd",
    }
    assert sorted(p.name for p in out.glob("*_seg.*")) == sorted(written)
    assert all(complete(out / seg, inputs / name) for seg, name in written.items())


def test_one_file_name_in_two_folders_is_refused_before_anything_is_written(tmp_path):
    a, b = tmp_path / "a" / "case.nii.gz", tmp_path / "b" / "case.nii.gz"
    with pytest.raises(OutputConflictError) as raised:
        output_names([{"image": str(a)}, {"image": str(b)}])
    assert f"{a}, {b} -> case_nii_gz_seg.nii.gz" in str(raised.value)
    assert output_names([str(a), str(tmp_path / "b" / "other.nrrd")]) == {
        a: "case_seg.nii.gz",
        b.parent / "other.nrrd": "other_seg.nii.gz",
    }


def test_a_second_run_into_an_output_folder_in_use_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = shared_data(HIPPOCAMPUS) / "hippocampus_001.nii.gz"
    for i in range(60):  # enough cases that the first run is still writing when the second starts
        (inputs / f"case_{i:02d}.nii.gz").symlink_to(source)
    first_model = save_model(tmp_path / "first", seed=0)
    out = tmp_path / "eval"
    first = subprocess.Popen(
        inference_command(tmp_path / "first", inputs, "--output_dir", str(out)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / LOCK).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / LOCK).exists(), "the first run never took the lock"
        save_model(tmp_path / "second", seed=1)
        message = user_message(
            run_workflow, INFERENCE, tmp_path / "second", dataset_dir=str(inputs), output_dir=str(out)
        )
        assert first.poll() is None, "the first run ended before the second was refused; give it more cases"
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert f"{out} is in use by another inference or evaluation run (process {first.pid} on " in message
    assert "wait for it to finish or choose another --output_dir" in message
    assert first.returncode == 0, stderr[-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"] == str(first_model) and len(manifest["outputs"]) == 60
    assert all(sha256(out / name) == digest for name, digest in manifest["outputs"].items())
    assert not (out / LOCK).exists()


def test_a_volume_of_one_slice_comes_back_in_its_input_shape(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = nib.load(shared_data(HIPPOCAMPUS) / "hippocampus_001.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, 17:18], image.affine), inputs / "one.nii.gz")
    save_model(tmp_path, seed=0)
    run_workflow(INFERENCE, tmp_path, dataset_dir=str(inputs))
    assert nib.load(tmp_path / "eval/one_seg.nii.gz").shape == (35, 51, 1)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write: a read-only tmpfs as root (root ignores permissions), else mode 0555."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_a_read_only_output_folder_or_a_file_as_output_dir_is_one_line(tmp_path, read_only_folder):
    inputs = hippocampus_inputs(tmp_path / "in", cases=(), small=True)
    save_model(tmp_path, seed=0)
    message = user_message(run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs), output_dir=str(read_only_folder))
    assert message.startswith(f"--output_dir {read_only_folder} cannot be written (")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    message = user_message(run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs), output_dir=str(a_file))
    assert message == f"--output_dir {a_file} is a file, not a folder; choose a folder for the outputs"
    assert a_file.read_text() == "mine"


def test_a_dicom_seg_that_cannot_be_written_completely_leaves_nothing_under_its_name(tmp_path):
    root = shared_data("dicom-ct-seg")
    label = LoadImage(image_only=True, reader="ITKReader")(str(root / "liver_spine_seg.nrrd"))
    label = np.asarray(label).astype(np.uint16)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # the SEG is about 200 kB; Python ignores SIGXFSZ
    try:
        with pytest.raises(FileWriteError, match="File too large"):
            write_dicom_seg(label, root / "ct-3slice", NAMES, CODES, tmp_path / "ct_seg.dcm")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []
