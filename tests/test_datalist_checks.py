"""Datalists drop no case silently, refuse validation cases that are training cases, and report duplicates."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import nibabel as nib
import pytest
from conftest import REPO, shared_data

from samsp_monai.data.datalist import check_splits, load_datalist
from samsp_monai.errors import SAMSPError


def test_make_datalist_msd_keeps_nii_cases(tmp_path):
    msd = shared_data("msd-hippocampus")
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
        shutil.copy(msd / folder / "hippocampus_001.nii.gz", tmp_path / folder)
        nib.save(nib.load(msd / folder / "hippocampus_003.nii.gz"), tmp_path / folder / "hippocampus_003.nii")
    output = tmp_path / "datalist.json"
    cmd = [sys.executable, "scripts/make_datalist.py", "msd", str(tmp_path), "-o", str(output), "--val_fraction", "0.5"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{output}: 1 training, 1 validation" in result.stdout
    datalist = json.loads(output.read_text())
    images = sorted(item["image"] for split in datalist.values() for item in split)
    assert images == ["imagesTr/hippocampus_001.nii.gz", "imagesTr/hippocampus_003.nii"]
    assert all(item["label"] == item["image"].replace("imagesTr", "labelsTr") for s in datalist.values() for item in s)


def test_training_refuses_validation_cases_that_are_training_cases(tmp_path):
    msd = shared_data("msd-hippocampus")
    case = {
        "image": str(msd / "imagesTr/hippocampus_001.nii.gz"),
        "label": str(msd / "labelsTr/hippocampus_001.nii.gz"),
    }
    other = {
        "image": str(msd / "imagesTr/hippocampus_003.nii.gz"),
        "label": str(msd / "labelsTr/hippocampus_003.nii.gz"),
    }
    data = tmp_path / "data"
    data.mkdir()
    (data / "datalist.json").write_text(json.dumps({"training": [case, other], "validation": [case]}))
    configs = f"['{REPO / 'bundle/configs/train.json'}','{REPO / 'bundle/configs/demo.json'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    cmd += ["--bundle_root", str(tmp_path / "bundle"), "--dataset_dir", str(data)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert (
        f"samsp-monai error: 1 of 1 validation case(s) are also training cases: {case['image']}. The best model "
        "would be chosen on data it trained on; write a datalist with separate splits (scripts/make_datalist.py), "
        "or pass --allow_overlap True"
    ) in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bundle/models").exists()


def test_overlap_is_allowed_only_by_the_switch_and_duplicates_are_reported(tmp_path, caplog):
    a, b = {"image": str(tmp_path / "a.nii.gz")}, {"image": str(tmp_path / "b.nii.gz")}
    with pytest.raises(SAMSPError, match="1 of 1 validation case"):
        check_splits([a, b], [a])
    with pytest.raises(SAMSPError, match="--allow_overlap must be True or False"):
        check_splits([a, b], [a], allow_overlap="true")
    with caplog.at_level(logging.WARNING):
        check_splits([a, b, a, a], [a], allow_overlap=True)
        check_splits([b], [a, a])
    messages = [r.getMessage() for r in caplog.records]
    assert f"the training datalist repeats 1 case(s): {a['image']} (3x)" in messages
    assert "--allow_overlap: 1 validation case(s) are also training cases" in messages
    assert f"the validation datalist repeats 1 case(s): {a['image']} (2x)" in messages


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"training": [', "not valid JSON (Expecting value: line 2 column 1 (char 15)); a datalist is"),
        ('{"validation": []}', "Data list training not specified"),
    ],
)
def test_a_malformed_or_training_less_datalist_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "datalist.json"
    path.write_text(content + "\n")
    with pytest.raises(SAMSPError) as raised:
        load_datalist(path, tmp_path, "training")
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
    assert "\n" not in str(raised.value)
