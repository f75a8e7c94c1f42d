"""DICOM CT series and DICOM SEG loading on the real dcmqi test data (3-slice CT + liver SEG/NRRD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_data
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from samsp_monai.data.datalist import build_datalist
from samsp_monai.data.dicom_seg import DicomSegReader, _resample_onto, _series_geometry, _series_in, is_dicom_seg

LIVER_VOXELS = 107_098  # NOTES.md: the SEG's and the NRRD's foreground count


@pytest.fixture(scope="module")
def root() -> Path:
    return shared_data("dicom-ct-seg")


def load_ras(path: Path, reader) -> MetaTensor:
    """The bundle's loading chain: load, channel first, RAS."""
    chain = Compose(
        [
            LoadImaged(keys="x", reader=reader),
            EnsureChannelFirstd(keys="x"),
            Orientationd(keys="x", axcodes="RAS", labels=None),
        ]
    )
    return chain({"x": str(path)})["x"]


@pytest.fixture(scope="module")
def nrrd_label(root: Path) -> MetaTensor:
    return load_ras(root / "liver_seg.nrrd", "ITKReader")


def test_ct_series_geometry_matches_dicom_headers(root: Path) -> None:
    image = LoadImaged(keys="image", reader="ITKReader")({"image": str(root / "ct-3slice")})["image"]
    assert tuple(image.shape) == (512, 512, 3)

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((root / "ct-3slice").glob("*.dcm"))]
    row, col = (np.array(headers[0].ImageOrientationPatient[i : i + 3], float) for i in (0, 3))
    normal = np.cross(row, col)
    positions = sorted((np.array(h.ImagePositionPatient, float) for h in headers), key=lambda p: p @ normal)
    # The slice spacing is the position step (1.0 mm); SliceThickness (1.25 mm) is not the spacing here.
    slice_step = (positions[-1] - positions[0]) @ normal / (len(positions) - 1)
    row_spacing, col_spacing = (float(s) for s in headers[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row * col_spacing, col * row_spacing, normal * slice_step])
    lps[:3, 3] = positions[0]
    assert np.allclose(image.affine.numpy(), np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    assert np.allclose(image.meta["spacing"], [col_spacing, row_spacing, 1.0], atol=1e-6)


@pytest.mark.parametrize("layout", ["beside", "labels_folder", "reference_dir"])
def test_seg_matches_nrrd_label(root: Path, nrrd_label: MetaTensor, tmp_path: Path, layout: str) -> None:
    """The SEG label agrees with the NRRD one voxel for voxel, whichever way its series is found."""
    seg, reader = root / "liver.dcm", DicomSegReader()
    if layout == "labels_folder":  # <tmp>/labels/liver.dcm finds the sibling <tmp>/ct/ by SeriesInstanceUID
        (tmp_path / "labels").mkdir()
        (tmp_path / "ct").symlink_to(root / "ct-3slice", target_is_directory=True)
        seg = tmp_path / "labels" / "liver.dcm"
        seg.symlink_to(root / "liver.dcm")
    elif layout == "reference_dir":
        reader = DicomSegReader(reference_dir=root / "ct-3slice")
    label = load_ras(seg, reader)
    assert label.shape == nrrd_label.shape == (1, 512, 512, 3)
    assert np.allclose(label.affine.numpy(), nrrd_label.affine.numpy())
    assert np.array_equal(label.numpy(), nrrd_label.numpy())
    assert int((label > 0).sum()) == LIVER_VOXELS


def test_partial_seg_is_placed_on_its_slice(root: Path) -> None:
    """A SEG holding one frame lands on the series slice at the same position, the others stay 0."""
    (files,) = _series_in(str(root / "ct-3slice")).values()
    reference = _series_geometry(files)
    frame = sitk.Image([512, 512, 1], sitk.sitkUInt8)
    frame[100:110, 200:205, 0] = 2
    frame.SetSpacing(tuple(reference.GetSpacing()))
    frame.SetOrigin(tuple(reference.TransformIndexToPhysicalPoint((0, 0, 1))))  # the middle slice
    array = np.asarray(_resample_onto(frame, reference))  # ITK (x, y, z) -> numpy (z, y, x)
    assert array.shape == (3, 512, 512)
    assert np.unique(array[[0, 2]]).tolist() == [0]
    assert np.array_equal(np.argwhere(array[1] == 2).min(0), [200, 100]) and int((array == 2).sum()) == 50


def test_datalist_item_loads_image_and_seg_on_one_grid(root: Path) -> None:
    """A dicom-layout datalist item with a SEG label, read through one reader list."""
    item = {k: str(root / v) for k, v in build_datalist("dicom", root, label_glob="liver.dcm")["training"][0].items()}
    keys = ["image", "label"]
    data = Compose(
        [
            LoadImaged(keys=keys, reader=["ITKReader", DicomSegReader()]),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS", labels=None),
        ]
    )(item)
    assert data["image"].shape == data["label"].shape == (1, 512, 512, 3)
    assert np.allclose(data["image"].affine.numpy(), data["label"].affine.numpy())
    assert int((data["label"] > 0).sum()) == LIVER_VOXELS


def test_seg_errors_name_file_and_problem(root: Path, tmp_path: Path) -> None:
    assert is_dicom_seg(root / "liver.dcm")
    assert not any(is_dicom_seg(p) for p in (root / "ct-3slice" / "01.dcm", root / "liver_seg.nrrd", root))
    with pytest.raises(ValueError, match=r"01\.dcm: not a DICOM SEG"):
        DicomSegReader().read(root / "ct-3slice" / "01.dcm")
    with pytest.raises(ValueError, match=r"liver_seg\.nrrd: not a DICOM file"):
        DicomSegReader().read(root / "liver_seg.nrrd")
    with pytest.raises(FileNotFoundError, match=r"liver\.dcm: referenced series 1\.2\.392\.\S+ not found in"):
        DicomSegReader(reference_dir=tmp_path).read(root / "liver.dcm")
