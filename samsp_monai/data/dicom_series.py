"""Is a DICOM series folder complete? One series, every slice readable, no instance or slice position missing.

ITK reads whatever slices it can and quietly skips the rest: a folder with one truncated slice loads with one
slice fewer and a doubled spacing, and a folder holding two series loads one of them. Both give a wrong
segmentation on the wrong grid, so they are refused here with the file or series named.

Non-image objects stored beside the slices (DICOM SEG, structured reports, RT objects, presentation states,
registrations, encapsulated documents) are recognised by their SOP class and left out: ITK is handed the
series of the image slices by name, never "the first series GDCM lists", which can be the SEG. A file of an
image SOP class without pixel data is a damaged slice (a truncated compressed slice reads so), not a missing
instance. Localizers (ImageType LOCALIZER) and slices of another orientation are refused and named as such.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import itk
import numpy as np
import pydicom
from monai.data import ITKReader
from monai.utils import ensure_tuple
from pydicom.uid import UID

from ..errors import SAMSPError

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage: not an image slice
# SOP classes (and class families, by prefix) that are no slice of an image volume: raw data, registrations and
# SEG (66.x), presentation states (11.x), SR and key objects (88.x), RT objects (481.x), encapsulated documents
# (104.x), waveforms (9.x)
NON_IMAGE_SOP_PREFIXES = tuple(
    f"1.2.840.10008.5.1.4.1.1.{family}." for family in ("66", "11", "88", "481", "104", "9")
) + (SEG_SOP_CLASS_UID,)
ORIENTATION_TOLERANCE = 1e-3
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
        if is_non_image(ds):
            continue
        if "PixelData" not in ds:
            problems.append(f"  {path.name}: no pixel data (a truncated file, or an image object without pixels)")
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


def is_non_image(ds: pydicom.Dataset) -> bool:
    """A SEG, SR, RT object, presentation state, ...: stored beside slices, never part of the volume."""
    sop_class = str(ds.get("SOPClassUID", ""))
    return sop_class.startswith(NON_IMAGE_SOP_PREFIXES)


def _no_localizers(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    localizers = [path.name for path, ds in slices if "LOCALIZER" in [str(t).upper() for t in ds.get("ImageType", [])]]
    if localizers:
        raise DicomSeriesError(
            f"DICOM series {folder}: {', '.join(localizers[:10])} "
            f"{'is a localizer' if len(localizers) == 1 else 'are localizers'} (ImageType LOCALIZER), not slices of "
            "the volume; move them out of the folder."
        )


def _one_orientation(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]) -> None:
    groups: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for path, ds in slices:
        if "ImageOrientationPatient" in ds:
            cosines = np.round(np.asarray(ds.ImageOrientationPatient, dtype=float) / ORIENTATION_TOLERANCE)
            groups[tuple(cosines * ORIENTATION_TOLERANCE)].append(path.name)
    if len(groups) > 1:
        lines = [
            f"  {len(names)} slice(s) with orientation {[round(c, 3) for c in cosines]} (e.g. {names[0]})"
            for cosines, names in groups.items()
        ]
        raise DicomSeriesError(
            f"DICOM series {folder}: slices in {len(groups)} orientations (mixed orientations):\n"
            + "\n".join(lines)
            + "\nOne volume needs one orientation; keep one set of slices in the folder."
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


def check_series_folder(folder: str | Path) -> list[Path]:
    """Raise `DicomSeriesError` unless `folder` holds exactly one complete, evenly spaced image series; return the
    files of its slices."""
    folder = Path(folder)
    slices = _read_slices(folder)
    _one_series(folder, slices)
    _no_localizers(folder, slices)
    _one_orientation(folder, slices)
    _same_size(folder, slices)
    _instances_complete(folder, slices)
    _spacing_regular(folder, slices)
    return [path for path, _ in slices]


def gdcm_series_name(folder: Path, files: list[Path]) -> str:
    """The series identifier under which ITKReader's GDCM lists exactly `files` (ITKReader's own lookup)."""
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # Series Date, as ITKReader
    names.SetDirectory(str(folder))
    wanted = {str(p.resolve()) for p in files}
    for uid in names.GetSeriesUIDs():
        if {str(Path(f).resolve()) for f in names.GetFileNames(uid)} == wanted:
            return uid
    raise DicomSeriesError(f"DICOM series {folder}: ITK does not list its {len(files)} slices as one series")


class CheckedSeriesReader(ITKReader):
    """MONAI's ITKReader for DICOM series folders, which refuses an incomplete series before ITK reads it.

    ITK reads whatever slices it can (see the module docstring); this reader claims folders only, so in
    `LoadImage`'s choice by type it takes series folders and leaves files to the other readers.
    """

    def verify_suffix(self, filename) -> bool:
        return all(Path(f).is_dir() for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        """Check each folder, then read exactly its image slices (by their GDCM series name)."""
        images = []
        for folder in ensure_tuple(data):
            self.series_name = gdcm_series_name(Path(folder), check_series_folder(folder))
            images.append(super().read(folder, **kwargs))
        return images if len(images) > 1 else images[0]
