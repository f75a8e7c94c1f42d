"""Inference, evaluation and training runs on folders mixing good and bad files, through the bundle's commands.

One bad case is reported and skipped while the others are written (exit status 1, every failure listed);
another model's segmentations are never silently overwritten; bad training data stops before any network is
built, with every bad file listed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_files import (
    add_second_series,
    dicom_series,
    nifti_copy,
    not_gzip,
    truncated,
    with_label_value,
    with_nonfinite,
)
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow

from samsp_monai.errors import find_user_error
from samsp_monai.serving.case_isolation import FailedCasesError
from samsp_monai.serving.output_guard import MANIFEST

CONFIGS = REPO / "bundle/configs"
INFERENCE = [str(CONFIGS / "inference.json")]
SMALL = {"sam_variant": "vit_test", "image_size": 64}


def save_model(bundle_root: Path, seed: int) -> Path:
    """A model.pt as training writes it, with random weights drawn from `seed` (different seeds, different models)."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(SMALL)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    path = bundle_root / "models/model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict()}, path)
    return path


def run_workflow(configs: list[str], bundle_root: Path, **overrides) -> None:
    wf = ConfigWorkflow(config_file=configs, workflow_type=None, bundle_root=str(bundle_root), **SMALL, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


def user_message(call, *args, **kwargs) -> str:
    with pytest.raises(Exception) as raised:
        call(*args, **kwargs)
    user_error = find_user_error(raised.value)
    assert user_error is not None, f"no SAMSPError in {raised.value!r}"
    return str(user_error)


def segmentations(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*_seg.*"))}


def test_inference_command_skips_bad_cases_writes_the_rest_and_exits_nonzero(tmp_path):
    msd = shared_data("msd-hippocampus") / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("hippocampus_001", "hippocampus_003"):
        shutil.copy(msd / f"{case}.nii.gz", inputs)
    bad = [
        nifti_copy(msd / "hippocampus_004.nii.gz", inputs / "nan.nii.gz", with_nonfinite(np.nan)),
        truncated(msd / "hippocampus_006.nii.gz", inputs / "truncated.nii.gz"),
        not_gzip(msd / "hippocampus_007.nii.gz", inputs / "plain.nii.gz"),
        Path(shutil.copy(sorted((shared_data("kvasir-seg") / "images").iterdir())[0], inputs / "photo.jpg")),
    ]
    two = dicom_series(shared_data("dicom-ct-seg") / "ct-3slice", inputs / "two_series")
    uid = add_second_series(two)
    bad.append(two)
    save_model(tmp_path, seed=0)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE[0], "--bundle_root", str(tmp_path)]
    cmd += ["--dataset_dir", str(inputs), "--sam_variant", "vit_test", "--image_size", "64"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    out = tmp_path / "eval"
    assert f"segmented 2 of 7 cases into {out}" in result.stdout
    assert f"samsp-monai error: 5 of 7 cases failed and were skipped (the other 2 were written to {out}):" in (
        result.stderr
    )
    skipped = [line for line in (result.stdout + result.stderr).splitlines() if "skipped a case: " in line]
    assert len(skipped) == len(bad) and all(any(str(path) in line for line in skipped) for path in bad)
    assert re.search(r"nan.nii.gz: 2 of \d+ voxels are NaN or infinite", result.stderr) and uid in result.stderr
    assert "photo.jpg: 2D" in result.stderr and "plain.nii.gz: cannot be read" in result.stderr
    assert "Traceback" not in result.stderr and "unable to load" not in result.stdout + result.stderr
    assert sorted(segmentations(out)) == ["hippocampus_001_seg.nii.gz", "hippocampus_003_seg.nii.gz"]
    assert nib.load(out / "hippocampus_003_seg.nii.gz").shape == nib.load(msd / "hippocampus_003.nii.gz").shape


def test_segmentations_of_another_model_are_not_overwritten(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shared_data("msd-hippocampus") / "imagesTr/hippocampus_001.nii.gz", inputs)
    out = tmp_path / "eval"
    first = save_model(tmp_path, seed=0)
    run_workflow(INFERENCE, tmp_path, dataset_dir=str(inputs))
    written = segmentations(out)
    assert list(written) == ["hippocampus_001_seg.nii.gz"]
    run_workflow(INFERENCE, tmp_path, dataset_dir=str(inputs))  # the same model may rewrite its own results
    assert segmentations(out) == written
    users = {"liver_seg.nrrd": b"a ground-truth label", "old_case_seg.nii.gz": b"not recorded as written by us"}
    for name, content in users.items():
        (out / name).write_bytes(content)

    second = save_model(tmp_path, seed=1)
    assert first == second  # same path, other weights
    message = user_message(run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs))
    assert f"{out} holds 1 segmentation(s) made by model {second}" in message
    assert "hippocampus_001_seg.nii.gz. Choose another --output_dir, or pass --overwrite True to remove" in message
    assert segmentations(out) == written | users
    assert "--overwrite must be True or False" in user_message(
        run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs), overwrite="true"
    )

    run_workflow(INFERENCE, tmp_path, dataset_dir=str(inputs), overwrite=True)
    now = segmentations(out)
    assert {name: now[name] for name in users} == users  # --overwrite removed only what the tool had written
    assert now["hippocampus_001_seg.nii.gz"] != written["hippocampus_001_seg.nii.gz"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"] == str(second) and len(manifest["model_sha256"]) == 12
    digest = hashlib.sha256(now["hippocampus_001_seg.nii.gz"]).hexdigest()
    assert manifest["outputs"] == {"hippocampus_001_seg.nii.gz": digest}


def test_outputs_of_unknown_origin_are_not_overwritten(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "eval"
    inputs.mkdir()
    out.mkdir()
    shutil.copy(shared_data("msd-hippocampus") / "imagesTr/hippocampus_001.nii.gz", inputs)
    (out / "hippocampus_001_seg.nii.gz").write_bytes(b"someone else's")
    save_model(tmp_path, seed=0)
    for overwrite in (False, True):
        message = user_message(run_workflow, INFERENCE, tmp_path, dataset_dir=str(inputs), overwrite=overwrite)
        assert f"{out}: 1 file(s) under this run's output names were not written by samsp-monai" in message
        assert "hippocampus_001_seg.nii.gz. Move them away or choose another --output_dir" in message
        assert (out / "hippocampus_001_seg.nii.gz").read_bytes() == b"someone else's"


def test_evaluation_skips_a_case_whose_label_exceeds_the_classes(tmp_path):
    root = shared_data("msd-hippocampus")
    nifti_copy(root / "labelsTr/hippocampus_003.nii.gz", tmp_path / "label_3.nii.gz", with_label_value(5))
    datalist = {
        "validation": [
            {
                "image": str(root / "imagesTr/hippocampus_001.nii.gz"),
                "label": str(root / "labelsTr/hippocampus_001.nii.gz"),
            },
            {"image": str(root / "imagesTr/hippocampus_003.nii.gz"), "label": str(tmp_path / "label_3.nii.gz")},
        ]
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    save_model(tmp_path, seed=0)
    configs = [*INFERENCE, str(CONFIGS / "evaluate.json")]
    with pytest.raises(Exception) as raised:
        run_workflow(configs, tmp_path, dataset_dir=str(root), datalist_file=str(tmp_path / "datalist.json"))
    error = find_user_error(raised.value)
    assert isinstance(error, FailedCasesError)
    assert str(error).startswith("1 of 2 cases failed") and f"label {tmp_path / 'label_3.nii.gz'}: values [5]" in str(
        error
    )
    rows = (tmp_path / "eval/metrics_per_case.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["hippocampus_001", "hippocampus_001"]  # one row per class


def test_training_command_lists_every_bad_case_before_building_anything(tmp_path):
    msd = shared_data("msd-hippocampus")
    data = tmp_path / "data"
    data.mkdir()
    image, label = msd / "imagesTr/hippocampus_001.nii.gz", msd / "labelsTr/hippocampus_001.nii.gz"
    nifti_copy(image, data / "nan.nii.gz", with_nonfinite(np.inf, count=3))
    nifti_copy(label, data / "high.nii.gz", with_label_value(3))
    truncated(label, data / "cut.nii.gz")
    case = {"image": str(image), "label": str(label)}
    datalist = {
        "training": [case, {"image": "nan.nii.gz", "label": str(label)}, {"image": str(image), "label": "high.nii.gz"}],
        "validation": [{"image": str(image), "label": "cut.nii.gz"}],
    }
    (data / "datalist.json").write_text(json.dumps(datalist))
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'demo.json'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    cmd += ["--bundle_root", str(tmp_path / "bundle"), "--dataset_dir", str(data), "--allow_overlap", "True"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "samsp-monai error: 3 of 4 cases cannot be used:" in result.stderr, result.stderr[-3000:]
    assert f"[training] image {data / 'nan.nii.gz'}: 3 of 62475 voxels are NaN or infinite" in result.stderr
    assert f"[training] label {data / 'high.nii.gz'}: values [3] outside 0..2" in result.stderr
    assert f"[validation] {image} and {data / 'cut.nii.gz'}: cannot be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bundle/models").exists()
