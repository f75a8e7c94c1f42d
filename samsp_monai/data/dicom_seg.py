"""Load DICOM SEG label maps on the voxel grid of the image series they segment.

A SEG stores only the frames that hold segments, in its own frame geometry, while training needs the
label on the image's grid and affine. :class:`DicomSegReader` decodes the SEG with pydicom-seg, finds the
series named by its ``ReferencedSeriesSequence``, resamples the label map (nearest neighbour, in physical
space) onto that series' ITK geometry and hands the result to MONAI's ``ITKReader.get_data``. Shape, axis
order and affine therefore follow ``LoadImage(reader="ITKReader")`` on the series by construction.

Referenced series lookup (by the SEG's referenced SeriesInstanceUID, first match wins):
``reference_dir`` when given; otherwise the SEG's own folder, its sub-folders, then its sibling folders
(the sub-folders of its parent), which covers series stored beside the SEG or next to a ``labels/`` folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import itk
import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk
from monai.config import PathLike
from monai.data import ImageReader, ITKReader
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple
from pydicom.errors import InvalidDicomError

from .dicom_series import SEG_SOP_CLASS_UID, CheckedSeriesReader


def is_dicom_seg(path: PathLike) -> bool:
    """True for a DICOM file whose SOP class is Segmentation Storage; never raises."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError):
        return False
    return ds.get("SOPClassUID") == SEG_SOP_CLASS_UID


@lru_cache(maxsize=256)
def _series_in(folder: str) -> dict[str, tuple[str, ...]]:
    """SeriesInstanceUID -> files in GDCM's slice order; cached as every SEG load scans the same folders."""
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(folder)
    return {uid: tuple(names.GetFileNames(uid)) for uid in names.GetSeriesUIDs()}


def _series_geometry(files: Sequence[str]) -> itk.Image:
    """The series as ITK sees it (origin, spacing, direction, size) without reading its pixels."""
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New(FileNames=files, ImageIO=itk.GDCMImageIO.New())
    reader.UpdateOutputInformation()
    return reader.GetOutput()


def _resample_onto(seg: sitk.Image, reference: itk.Image) -> itk.Image:
    """Nearest-neighbour resampling keeps label values; voxels outside the SEG's frames become 0."""
    grid = sitk.Image([int(s) for s in reference.GetLargestPossibleRegion().GetSize()], seg.GetPixelID())
    grid.SetOrigin(tuple(reference.GetOrigin()))
    grid.SetSpacing(tuple(reference.GetSpacing()))
    grid.SetDirection(itk.array_from_matrix(reference.GetDirection()).ravel().tolist())
    array = sitk.GetArrayFromImage(sitk.Resample(seg, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    label = itk.image_from_array(np.ascontiguousarray(array))
    label.SetOrigin(reference.GetOrigin())
    label.SetSpacing(reference.GetSpacing())
    label.SetDirection(reference.GetDirection())
    return label


class DicomSegReader(ImageReader):
    """MONAI reader for DICOM SEG files: a label map on the referenced series' grid (see module docstring).

    Use it alone, ``LoadImaged(keys="label", reader=DicomSegReader())``, or last in a reader list,
    ``reader=["ITKReader", DicomSegReader()]``: MONAI tries a list's readers from last to first, and this
    one refuses anything that is not a SEG, so other files fall through to ITKReader.

    Args:
        reference_dir: folder holding the referenced image series; when None it is searched for next to
            the SEG file.
    """

    def __init__(self, reference_dir: PathLike | None = None):
        super().__init__()
        self.reference_dir = None if reference_dir is None else Path(reference_dir)
        self._itk = ITKReader()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Claim only SEG files, so in a reader list other DICOM or NIfTI files go to other readers."""
        return all(is_dicom_seg(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> itk.Image | list[itk.Image]:
        """One ITK label image per SEG file, on its referenced series' geometry."""
        images = [self._read_seg(Path(f)) for f in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: itk.Image | list[itk.Image]) -> tuple[np.ndarray, dict]:
        """Delegated to ITKReader so that array layout and affine match the image loaded by it."""
        return self._itk.get_data(img)

    def _read_seg(self, path: Path) -> itk.Image:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as e:
            raise ValueError(f"{path}: not a DICOM file ({e})") from e
        if ds.get("SOPClassUID") != SEG_SOP_CLASS_UID:
            raise ValueError(
                f"{path}: not a DICOM SEG (SOPClassUID {ds.get('SOPClassUID')}, "
                f"expected Segmentation Storage {SEG_SOP_CLASS_UID})"
            )
        if not ds.get("ReferencedSeriesSequence"):
            raise ValueError(f"{path}: DICOM SEG without ReferencedSeriesSequence; its image series is unknown")
        series_uid = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        files = self._find_series(path, series_uid)
        try:
            seg = pydicom_seg.MultiClassReader().read(ds)
        except ValueError as e:
            raise ValueError(f"{path}: cannot decode the DICOM SEG as a label map: {e}") from e
        return _resample_onto(seg.image, _series_geometry(files))

    def _candidate_dirs(self, seg_path: Path) -> Iterator[Path]:
        if self.reference_dir is not None:
            yield self.reference_dir
            return
        folder = seg_path.absolute().parent
        yield folder
        yield from sorted(d for d in folder.iterdir() if d.is_dir())
        yield from sorted(d for d in folder.parent.iterdir() if d.is_dir() and d != folder)

    def _find_series(self, seg_path: Path, series_uid: str) -> tuple[str, ...]:
        if self.reference_dir is not None and not self.reference_dir.is_dir():
            raise FileNotFoundError(f"{seg_path}: reference_dir {self.reference_dir} is not a folder")
        searched = []
        for folder in self._candidate_dirs(seg_path):
            searched.append(str(folder))
            files = _series_in(str(folder)).get(series_uid)
            if files:
                return files
        raise FileNotFoundError(f"{seg_path}: referenced series {series_uid} not found in {', '.join(searched)}")


def load_images_and_segs(keys: Sequence[str] | str, **kwargs) -> LoadImaged:
    """MONAI's `LoadImaged` choosing each file's reader by its type: DICOM SEG files go to `DicomSegReader`,
    DICOM series folders to `CheckedSeriesReader` (refuses incomplete series), the rest to MONAI's defaults.

    Passing `reader=DicomSegReader()` instead makes MONAI *try* every registered reader in turn and log an
    "unable to load" line for each refusal (one per NIfTI, five per DICOM series), and a damaged file then
    fails with the tracebacks of every reader. Chosen by type, a file meets only its own reader, whose
    error says what is wrong.
    """
    loader = LoadImaged(keys, **kwargs)
    loader.register(CheckedSeriesReader())
    loader.register(DicomSegReader())
    return loader
