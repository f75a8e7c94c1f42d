"""DICOM series folders as PACS exports leave them: non-image objects beside the slices are never read as the
image; localizers, mixed orientations and truncated compressed slices are refused under their own names."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from bad_files import dicom_series
from conftest import shared_data
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from samsp_monai.data.dicom_seg import load_images_and_segs
from samsp_monai.data.dicom_series import DicomSeriesError, check_series_folder

NON_IMAGE_CLASSES = {
    "sr.dcm": "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "rtstruct.dcm": "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "presentation.dcm": "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
}


def load(folder) -> np.ndarray:
    return np.asarray(load_images_and_segs("image", image_only=True)({"image": str(folder)})["image"])


def non_image_object(path, sop_class: str, series_uid: str) -> None:
    """A minimal object of `sop_class` in its own series, as a PACS export stores reports and annotations."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = sop_class, ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series_uid, generate_uid(), "SR"
    ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2.4 (MONAI Label's pin) writes by these
    ds.save_as(path, write_like_original=False)


@pytest.fixture
def ct(tmp_path):
    return dicom_series(shared_data("dicom-ct-seg") / "ct-3slice", tmp_path / "ct")


def test_a_seg_and_other_non_image_objects_in_the_series_folder_are_never_read_as_the_image(tmp_path, ct):
    alone = load(ct)
    seg = pydicom.dcmread(shared_data("dicom-ct-seg") / "liver.dcm")
    seg.SeriesInstanceUID = "1.2.1"  # GDCM lists this series first: a plain ITKReader reads the SEG (0/255)
    seg.save_as(ct / "liver_seg.dcm")
    for name, sop_class in NON_IMAGE_CLASSES.items():
        non_image_object(ct / name, sop_class, f"1.2.{len(name)}")
    assert check_series_folder(ct) == sorted(ct / f"0{i}.dcm" for i in (1, 2, 3))
    assert np.array_equal(load(ct), alone)


def test_a_localizer_or_a_slice_of_another_orientation_is_named_as_such(ct):
    ds = pydicom.dcmread(ct / "02.dcm")
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    ds.InstanceNumber, ds.SOPInstanceUID = 4, generate_uid()
    ds.save_as(ct / "04.dcm")
    with pytest.raises(DicomSeriesError) as raised:
        check_series_folder(ct)
    assert "slices in 2 orientations (mixed orientations)" in str(raised.value)
    assert "1 slice(s) with orientation [0.0, 1.0, 0.0, 0.0, 0.0, -1.0] (e.g. 04.dcm)" in str(raised.value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(ct / "04.dcm")
    with pytest.raises(DicomSeriesError) as raised:
        check_series_folder(ct)
    assert str(raised.value).startswith(f"DICOM series {ct}: 04.dcm is a localizer (ImageType LOCALIZER), not slices")
    assert "gap" not in str(raised.value) and "missing" not in str(raised.value)


def test_a_truncated_compressed_slice_is_damaged_not_a_missing_instance(ct):
    for path in sorted(ct.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    cut = ct / "02.dcm"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DicomSeriesError) as raised:
        check_series_folder(ct)
    assert f"DICOM series {ct}: damaged slice file(s):\n  02.dcm: no pixel data" in str(raised.value)
    assert "missing instance" not in str(raised.value)
