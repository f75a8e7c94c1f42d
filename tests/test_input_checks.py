"""Damaged or unsuitable input files, fed through the bundle's own load chain: refused with the file named.

Each class of problem is covered by several instances (NaN and Inf; labels above, below and between the
classes; shape and affine; 4D, 2D, RGBA and grey; truncated, two-series and gapped DICOM series).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bad_files import (
    add_second_series,
    add_slice,
    cropped,
    dicom_series,
    emptied,
    four_d,
    nifti_copy,
    not_gzip,
    png_copy,
    shifted,
    truncate_slice,
    truncated,
    two_d,
    with_label_value,
    with_nonfinite,
)
from conftest import REPO, shared_data
from monai.bundle import ConfigParser
from monai.transforms import Compose

from samsp_monai.data.datalist import EmptyDatalistError, build_datalist
from samsp_monai.data.input_checks import InputDataError, check_training_data, describe_failure
from samsp_monai.errors import find_user_error

CONFIGS = REPO / "bundle/configs"


def load_chain(*configs: str) -> Compose:
    """The `load_transforms` of the given configs, as the bundle builds them."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    return Compose(parser.get_parsed_content("load_transforms"))


@pytest.fixture(scope="module")
def volume_chain() -> Compose:
    return load_chain("train.json")


@pytest.fixture(scope="module")
def image2d_chain() -> Compose:
    return load_chain("train.json", "image2d.json")


@pytest.fixture
def msd(tmp_path: Path) -> tuple[Path, Path]:
    root = shared_data("msd-hippocampus")
    return root / "imagesTr/hippocampus_001.nii.gz", root / "labelsTr/hippocampus_001.nii.gz"


def refusal(chain: Compose, item: dict) -> str:
    """The one-line message a user sees for `item` (the `SAMSPError` somewhere in the raised chain)."""
    with pytest.raises(Exception) as raised:
        chain(item)
    user_error = find_user_error(raised.value)
    assert user_error is not None, f"no SAMSPError in {raised.value!r}"
    return str(user_error)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (with_nonfinite(np.nan), "2 of 62475 voxels are NaN or infinite"),
        (with_nonfinite(np.inf, count=5), "5 of 62475 voxels are NaN or infinite"),
        (four_d, "2 channels, expected 1; a 4D file"),
        (two_d, "2D (shape (35, 51)) but this config expects 3D; use bundle/configs/image2d.json"),
    ],
    ids=["nan", "inf", "4d", "2d"],
)
def test_bad_volume_image_is_refused_naming_it(volume_chain, msd, tmp_path, change, expected):
    image, label = msd
    bad = nifti_copy(image, tmp_path / "bad.nii.gz", change)
    message = refusal(volume_chain, {"image": str(bad), "label": str(label)})
    assert str(bad) in message and expected in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (with_label_value(3), "values [3] outside 0..2 (num_classes=2); set --num_classes"),
        (with_label_value(-1), "values [-1] outside 0..2"),
        (with_label_value(0.5), "non-integer values [0.5]"),
        (with_nonfinite(np.nan, count=1), "non-integer values [nan]"),
        (cropped, "shape (33, 51, 35) differs from its image"),
        (shifted, "affine differs from its image"),
        (four_d, "2 channels, expected 1; a label must be one map of class indices"),
        (two_d, "2D (shape (35, 51)) but this config expects 3D; a label must have the dimensions of its image"),
    ],
    ids=["above", "negative", "fractional", "nan", "shape", "affine", "4d", "2d"],
)
def test_bad_label_is_refused_naming_it(volume_chain, msd, tmp_path, change, expected):
    image, label = msd
    bad = nifti_copy(label, tmp_path / "bad_label.nii.gz", change)
    message = refusal(volume_chain, {"image": str(image), "label": str(bad)})
    assert str(bad) in message and expected in message


def test_good_volume_and_label_pass_unchanged(volume_chain, msd):
    image, label = msd
    out = volume_chain({"image": str(image), "label": str(label)})
    assert out["image"].shape == out["label"].shape == (1, *nib.load(image).shape)


@pytest.mark.parametrize("damage", [truncated, not_gzip], ids=["truncated", "not-gzip"])
def test_unreadable_nifti_gives_one_line_naming_the_file(volume_chain, msd, tmp_path, damage):
    bad = damage(msd[0], tmp_path / "bad.nii.gz")
    with pytest.raises(Exception) as raised:
        volume_chain({"image": str(bad)})
    message = describe_failure(raised.value, str(bad))
    assert message.startswith(f"{bad}: cannot be read (") and "suffix matches its format" in message
    assert "\n" not in message


def test_2d_inputs_to_the_volume_config_and_volumes_to_the_2d_config(volume_chain, image2d_chain, msd, tmp_path):
    photo = sorted((shared_data("kvasir-seg") / "images").iterdir())[0]
    message = refusal(volume_chain, {"image": str(photo)})
    assert str(photo) in message and "this config expects 3D; use bundle/configs/image2d.json" in message
    message = refusal(image2d_chain, {"image": str(msd[0])})
    assert str(msd[0]) in message and "expects 2D; drop bundle/configs/image2d.json" in message


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("RGBA", "4 channels, expected 3; an RGBA image must be converted to RGB"), ("L", "1 channels, expected 3")],
)
def test_2d_images_with_other_channels_are_refused(image2d_chain, tmp_path, mode, expected):
    kvasir = shared_data("kvasir-seg")
    name = sorted((kvasir / "images").iterdir())[0].stem
    image = png_copy(kvasir / f"images/{name}.jpg", tmp_path / f"{name}.png", mode)
    message = refusal(image2d_chain, {"image": str(image), "label": str(kvasir / f"masks/{name}.jpg")})
    assert str(image) in message and expected in message


def test_2d_mask_of_another_size_is_refused(image2d_chain, tmp_path):
    kvasir = shared_data("kvasir-seg")
    first, second = sorted((kvasir / "images").iterdir())[:2]
    message = refusal(image2d_chain, {"image": str(first), "label": str(kvasir / f"masks/{second.name}")})
    assert f"masks/{second.name}" in message and "differs from its image" in message


@pytest.fixture
def series(tmp_path: Path) -> Path:
    return dicom_series(shared_data("dicom-ct-seg") / "ct-3slice", tmp_path / "ct")


def test_complete_dicom_series_passes(volume_chain, series):
    assert volume_chain({"image": str(series)})["image"].shape == (1, 512, 512, 3)


def test_dicom_series_with_a_truncated_slice_is_refused(volume_chain, series):
    truncate_slice(series, "02.dcm")
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM series {series}: damaged slice file(s)" in message and "02.dcm: truncated pixel data" in message


def test_dicom_series_with_a_missing_slice_is_refused(volume_chain, series):
    (series / "02.dcm").unlink()
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM series {series}: 2 slices with missing instance numbers [2]" in message


def test_dicom_series_with_a_position_gap_is_refused(volume_chain, series):
    add_slice(series, "03.dcm", "04.dcm", instance=3, step_mm=-1.0)  # renumbered: instance numbers stay complete
    (series / "03.dcm").unlink()
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM series {series}: irregular slice spacing (typical 1.000 mm" in message
    assert "gaps at -129.69->-127.69 mm)" in message


def test_dicom_series_with_two_slices_at_one_position_is_refused(volume_chain, series):
    add_slice(series, "03.dcm", "04.dcm", instance=4, step_mm=0.0)
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM series {series}: two slices share one position" in message


def test_dicom_series_with_slices_of_another_size_is_refused(volume_chain, series):
    ds = pydicom.dcmread(series / "02.dcm")
    ds.Rows = 256
    ds.save_as(series / "02.dcm")
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM series {series}: slices of different sizes (01.dcm 512x512, 02.dcm 256x512" in message


def test_folder_holding_two_series_is_refused_naming_both(volume_chain, series):
    second_uid = add_second_series(series)
    message = refusal(volume_chain, {"image": str(series)})
    assert f"DICOM folder {series} holds 2 series" in message and second_uid in message
    assert "'second series', 3 files" in message and "Put each series in its own folder" in message


def test_loading_logs_no_reader_refusals(volume_chain, msd, series, caplog):
    with caplog.at_level(logging.DEBUG):
        volume_chain({"image": str(msd[0]), "label": str(msd[1])})
        volume_chain({"image": str(series)})
    assert "unable to load" not in caplog.text


def test_training_data_check_lists_every_bad_case_at_once(volume_chain, msd, tmp_path):
    image, label = msd
    nan = nifti_copy(image, tmp_path / "nan.nii.gz", with_nonfinite(np.nan))
    high = nifti_copy(label, tmp_path / "high.nii.gz", with_label_value(7))
    broken = truncated(image, tmp_path / "broken.nii.gz")
    good = {"image": str(image), "label": str(label)}
    training = [good, {"image": str(nan), "label": str(label)}, {"image": str(broken), "label": str(label)}]
    with pytest.raises(InputDataError) as raised:
        check_training_data(training, [good, {"image": str(image), "label": str(high)}], volume_chain)
    message = str(raised.value)
    assert message.startswith("3 of 5 cases cannot be used:\n")
    for line in (
        f"[training] image {nan}: 2 of",
        f"[training] {broken} and {label}: cannot be read",
        f"[validation] label {high}",
    ):
        assert line in message
    check_training_data([good], [good], volume_chain)  # a good data set passes


def test_training_data_with_only_empty_labels_or_no_cases_is_refused(volume_chain, msd, tmp_path):
    image, label = msd
    empty = nifti_copy(label, tmp_path / "empty.nii.gz", emptied)
    with pytest.raises(InputDataError, match="all 2 training labels are empty"):
        check_training_data([{"image": str(image), "label": str(empty)}] * 2, [], volume_chain)
    with pytest.raises(InputDataError, match="the training datalist is empty"):
        check_training_data([], [{"image": str(image), "label": str(label)}], volume_chain)


@pytest.mark.parametrize("layout", ["msd", "images"])
def test_make_datalist_refuses_a_root_without_cases(tmp_path, layout):
    for folder in {"msd": ("imagesTr", "labelsTr"), "images": ("images", "masks")}[layout]:
        (tmp_path / folder).mkdir()
    with pytest.raises(EmptyDatalistError, match=f"no '{layout}' cases found in {tmp_path}: expected"):
        build_datalist(layout, tmp_path)
