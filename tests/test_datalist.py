"""Datalist building on the real shared data: pairing, splits, unmatched-file errors, CLI."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, shared_data
from monai.data import load_decathlon_datalist

from samsp_monai.data.datalist import (
    Case,
    DataFolderError,
    UnmatchedFilesError,
    build_datalist,
    inference_inputs,
    load_datalist,
    split_cases,
    write_json_atomic,
)


def cli(*args: str) -> None:
    """Run the script's main() in-process: a subprocess would spend seconds re-importing torch/MONAI."""
    runpy.run_path(str(REPO / "scripts" / "make_datalist.py"))["main"](list(args))


def load_both(datalist: dict, root: Path, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Round-trip through the JSON file and MONAI's loader, as the bundle does."""
    path = tmp_path / "datalist.json"
    write_json_atomic(datalist, path)
    return tuple(load_decathlon_datalist(path, True, key, base_dir=root) for key in ("training", "validation"))


def test_msd_hippocampus_datalist(tmp_path: Path) -> None:
    root = shared_data("msd-hippocampus")
    train, val = load_both(build_datalist("msd", root), root, tmp_path)
    assert (len(train), len(val)) == (208, 52)
    for item in train + val:
        image, label = Path(item["image"]), Path(item["label"])
        assert image.is_file() and label.is_file()
        assert (image.parent.name, label.parent.name, image.name) == ("imagesTr", "labelsTr", label.name)
    assert not {i["image"] for i in train} & {i["image"] for i in val}


def test_seeded_split_is_reproducible_and_disjoint() -> None:
    root = shared_data("msd-hippocampus")
    first, again = build_datalist("msd", root, seed=3), build_datalist("msd", root, seed=3)
    other = build_datalist("msd", root, seed=4)
    assert first == again and first["validation"] != other["validation"]
    train = {i["image"] for i in first["training"]}
    val = {i["image"] for i in first["validation"]}
    assert not train & val and len(train | val) == 260


def test_kvasir_uses_official_split(tmp_path: Path) -> None:
    root = shared_data("kvasir-seg")
    datalist = build_datalist("images", root)
    train, val = load_both(datalist, root, tmp_path)
    assert (len(train), len(val)) == (880, 120)
    val_stems = {Path(i["image"]).stem for i in val}
    assert val_stems == set((root / "val.txt").read_text().split())
    assert all(Path(i["label"]).is_file() for i in train[:5])


def test_unmatched_files_are_all_listed(tmp_path: Path) -> None:
    src = shared_data("kvasir-seg")
    stems = sorted((src / "train.txt").read_text().split())[:4]
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for stem in stems[:3]:
        (tmp_path / "images" / f"{stem}.jpg").symlink_to(src / "images" / f"{stem}.jpg")
    for stem in stems[1:]:
        (tmp_path / "masks" / f"{stem}.jpg").symlink_to(src / "masks" / f"{stem}.jpg")
    (tmp_path / "images" / f"._{stems[1]}.jpg").write_bytes(b"macOS resource fork")

    with pytest.raises(UnmatchedFilesError) as err:
        build_datalist("images", tmp_path)
    assert err.value.images_without_label == [tmp_path / "images" / f"{stems[0]}.jpg"]
    assert err.value.labels_without_image == [tmp_path / "masks" / f"{stems[3]}.jpg"]

    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        cli("images", str(tmp_path), "-o", str(out))
    message = str(exit_info.value.code)
    assert message.startswith("error: 2 unmatched file(s)") and not out.exists()
    assert f"{stems[0]}.jpg" in message and f"{stems[3]}.jpg" in message


def test_dicom_datalist_label_glob(tmp_path: Path) -> None:
    root = shared_data("dicom-ct-seg")
    out = tmp_path / "dicom.json"
    cli("dicom", str(root), "--label_glob", "liver.dcm", "-o", str(out))
    assert json.loads(out.read_text()) == {"training": [{"image": "ct-3slice", "label": "liver.dcm"}], "validation": []}

    with pytest.raises(UnmatchedFilesError) as err:  # default "{series}.*": nothing named ct-3slice.*
        build_datalist("dicom", root)
    assert err.value.images_without_label == [root.resolve() / "ct-3slice"]
    assert {p.name for p in err.value.labels_without_image} == {"liver.dcm", "liver_seg.nrrd", "liver_spine_seg.nrrd"}
    with pytest.raises(ValueError, match="ambiguous"):
        build_datalist("dicom", root, label_glob="*.nrrd")


def test_split_lists_must_match_the_data() -> None:
    cases = [Case(n, Path(n), Path(n)) for n in "abcd"]
    splits = split_cases(cases, val_names=["b"])
    assert [c.name for c in splits["training"]] == ["a", "c", "d"]
    assert [c.name for c in splits["validation"]] == ["b"]
    with pytest.raises(ValueError) as err:
        split_cases(cases, train_names=["a", "b", "x"], val_names=["b"])
    assert all(s in str(err.value) for s in ("not in the data: x", "in both lists: b"))


def test_two_lists_naming_a_few_cases_make_a_subset_and_say_what_was_left_out(caplog) -> None:
    cases = [Case(f"c{i:03d}", Path(f"c{i:03d}"), Path(f"c{i:03d}")) for i in range(300)]
    caplog.set_level("INFO", logger="samsp_monai.data.datalist")
    splits = split_cases(cases, train_names=["c000", "c001", "c002"], val_names=["c003"])
    assert [c.name for c in splits["training"]] == ["c000", "c001", "c002"]
    assert [c.name for c in splits["validation"]] == ["c003"]
    assert caplog.messages == ["left out 296 of 300 cases, named in neither list"]


def test_limit_keeps_a_seeded_subset_in_the_split_proportions(tmp_path, capsys) -> None:
    root = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for i in range(20):
            (root / folder / f"case_{i:02d}.nii.gz").write_bytes(b"")
    out = tmp_path / "small.json"
    cli("msd", str(root), "-o", str(out), "--limit", "5")
    small = json.loads(out.read_text())
    assert (len(small["training"]), len(small["validation"])) == (4, 1)
    full = build_datalist("msd", root)
    assert all(item in full[key] for key in small for item in small[key])  # a subset of the same split
    assert build_datalist("msd", root, limit=5) == small  # seeded: the same subset every time
    assert capsys.readouterr().out.strip() == f"{out}: 4 training, 1 validation"


def test_a_missing_datalist_or_split_is_named_with_the_fix(tmp_path):
    with pytest.raises(DataFolderError, match=r"datalist not found: .*datalist\.json .*make_datalist\.py.*last in"):
        load_datalist(tmp_path / "datalist.json", tmp_path, "training")
    (tmp_path / "datalist.json").write_text('{"training": []}')
    with pytest.raises(DataFolderError, match=r"datalist\.json: .*validation"):
        load_datalist(tmp_path / "datalist.json", tmp_path, "validation")


def test_inference_takes_one_file_or_one_series_folder_as_well_as_a_folder(tmp_path):
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), volume)
    assert inference_inputs(volume) == [str(volume)]
    assert inference_inputs(tmp_path) == [str(volume)]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(DataFolderError, match=r"notes\.txt: not an image .*--dataset_dir takes such a file"):
        inference_inputs(notes)
    with pytest.raises(DataFolderError, match="folder not found"):
        inference_inputs(tmp_path / "absent")
