"""Is a DICOM series folder complete? One series, every slice readable, no instance or slice position missing.

ITK reads whatever slices it can and quietly skips the rest: a folder with one truncated slice loads with one
slice fewer and a doubled spacing, and a folder holding two series loads one of them. Both give a wrong
segmentation on the wrong grid, so they are refused here with the file or series named.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ITKReader
from monai.utils import ensure_tuple
from pydicom.uid import UID

from ..errors import SAMSPError

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage: not an image slice
SPACING_TOLERANCE = 0.01  # relative: slice gaps may exceed the narrowest by 1% (rounding in exported positions)


class DicomSeriesError(SAMSPError, ValueError):
    """A series folder that cannot be read as one complete volume."""


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble, whatever their suffix."""
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel", 1)) * frames * ds.BitsAllocated // 8


def _read_slices(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Every image file of the folder with its header; unreadable or truncated files are refused by name."""
    slices, problems = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # pydicom raises many kinds on damaged files
            problems.append(f"  {path.name}: unreadable ({e})")
            continue
        if ds.get("SOPClassUID") == SEG_SOP_CLASS_UID or "PixelData" not in ds:
            continue
        if not UID(ds.file_meta.TransferSyntaxUID).is_compressed and len(ds.PixelData) < _expected_pixel_bytes(ds):
            problems.append(
                f"  {path.name}: truncated pixel data ({len(ds.PixelData)} of {_expected_pixel_bytes(ds)} bytes)"
            )
            continue
        slices.append((path, ds))
    if problems:
        raise DicomSeriesError(
            f"DICOM series {folder}: damaged slice file(s):\n" + "\n".join(problems) + "\nRe-export or re-copy them."
        )
    if not slices:
        raise DicomSeriesError(f"DICOM series {folder}: no image slices found")
    return slices


def _one_series(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for _, ds in slices:
        series[str(ds.get("SeriesInstanceUID", "?"))].append(ds)
    if len(series) > 1:
        lines = [
            f"  {uid} ({first.get('Modality', '?')}, '{first.get('SeriesDescription', '')}', {len(items)} files)"
            for uid, items in series.items()
            for first in items[:1]
        ]
        raise DicomSeriesError(
            f"DICOM folder {folder} holds {len(series)} series:\n"
            + "\n".join(lines)
            + "\nPut each series in its own folder (one folder = one volume)."
        )


def _same_size(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(sizes) > 1:
        odd = [f"{path.name} {ds.Rows}x{ds.Columns}" for path, ds in slices][:10]
        raise DicomSeriesError(
            f"DICOM series {folder}: slices of different sizes ({', '.join(odd)}); one volume needs one size."
        )


def _instances_complete(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    numbers = [ds.get("InstanceNumber") for _, ds in slices]
    if len(slices) < 2 or any(n is None for n in numbers):
        return
    numbers = sorted(int(n) for n in numbers)
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if duplicates or missing:
        what = [f"missing instance numbers {missing}"] if missing else []
        what += [f"repeated instance numbers {duplicates}"] if duplicates else []
        raise DicomSeriesError(
            f"DICOM series {folder}: {len(slices)} slices with {', '.join(what)} "
            f"(instances {numbers[0]}..{numbers[-1]}). Copy the missing slices, or remove the duplicates."
        )


def _spacing_regular(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Slice positions along the slice normal must be evenly spaced: a gap means a missing slice."""
    headers = [ds for _, ds in slices]
    located = all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in headers)
    if len(headers) < 3 or not located:
        return
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in headers])
    gaps = np.diff(positions)
    typical = float(gaps.min())  # a missing slice widens a gap, so the narrowest one is the series' spacing
    if typical <= 1e-3:
        raise DicomSeriesError(
            f"DICOM series {folder}: two slices share one position; remove the duplicate or copy the complete series."
        )
    irregular = np.flatnonzero(gaps > typical * (1 + SPACING_TOLERANCE))
    if len(irregular):
        odd = [f"{positions[i]:.2f}->{positions[i + 1]:.2f} mm" for i in irregular]
        raise DicomSeriesError(
            f"DICOM series {folder}: irregular slice spacing (typical {typical:.3f} mm; gaps at {', '.join(odd[:5])}). "
            "A slice is missing; copy the complete series."
        )


def check_series_folder(folder: str | Path) -> None:
    """Raise `DicomSeriesError` unless `folder` holds exactly one complete, evenly spaced image series."""
    folder = Path(folder)
    slices = _read_slices(folder)
    _one_series(folder, slices)
    _same_size(folder, slices)
    _instances_complete(folder, slices)
    _spacing_regular(folder, slices)


class CheckedSeriesReader(ITKReader):
    """MONAI's ITKReader for DICOM series folders, which refuses an incomplete series before ITK reads it.

    ITK reads whatever slices it can (see the module docstring); this reader claims folders only, so in
    `LoadImage`'s choice by type it takes series folders and leaves files to the other readers.
    """

    def verify_suffix(self, filename) -> bool:
        return all(Path(f).is_dir() for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        for folder in ensure_tuple(data):
            check_series_folder(folder)
        return super().read(data, **kwargs)
