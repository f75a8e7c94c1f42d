"""Real damaged input files, made in a temporary folder from the shared data: one maker per kind of damage."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid


def nifti_copy(src: Path, dst: Path, change: Callable[[np.ndarray, np.ndarray], tuple] | None = None) -> Path:
    """`src` saved as `dst`, after `change(array, affine) -> (array, affine)` when given."""
    image = nib.load(src)
    array, affine = np.asanyarray(image.dataobj), image.affine.copy()
    if change is not None:
        array, affine = change(array, affine)
    nib.save(nib.Nifti1Image(array, affine), dst)
    return dst


def with_nonfinite(value: float, count: int = 2) -> Callable:
    def change(array, affine):
        array = array.astype(np.float32)
        array.flat[np.linspace(0, array.size - 1, count).astype(int)] = value
        return array, affine

    return change


def with_label_value(value: float) -> Callable:
    """Turn one foreground voxel into `value` (above the classes, negative or fractional)."""

    def change(array, affine):
        array = array.astype(np.float32)
        array.flat[np.flatnonzero(array)[0]] = value
        return array, affine

    return change


def cropped(array, affine):
    return array[:-2], affine


def shifted(array, affine):
    affine = affine.copy()
    affine[:3, 3] += 2.0  # 2 mm away from the image
    return array, affine


def four_d(array, affine):
    return np.stack([array, array], axis=-1), affine


def two_d(array, affine):
    return array[:, :, array.shape[2] // 2], affine


def emptied(array, affine):
    return np.zeros_like(array), affine


def truncated(src: Path, dst: Path) -> Path:
    """The first half of `src`, as an interrupted copy leaves it."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def not_gzip(src: Path, dst: Path) -> Path:
    """An uncompressed NIfTI under a `.nii.gz` name, as some tools write."""
    dst.write_bytes(gzip.decompress(src.read_bytes()))
    return dst


def png_copy(src: Path, dst: Path, mode: str) -> Path:
    Image.open(src).convert(mode).save(dst)
    return dst


def dicom_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def truncate_slice(folder: Path, name: str) -> None:
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def add_second_series(folder: Path, description: str = "second series") -> str:
    """Copies of the slices under a new SeriesInstanceUID, as when two series are exported into one folder."""
    uid = generate_uid()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesDescription = uid, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"b_{path.name}")
    return uid


def add_slice(folder: Path, like: str, name: str, instance: int, step_mm: float) -> None:
    """A new slice `step_mm` beyond `like` along the series' slice normal (a later instance)."""
    ds = pydicom.dcmread(folder / like)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, dtype=float) + step_mm * normal]
    ds.InstanceNumber = instance
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / name)
