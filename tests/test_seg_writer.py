"""DICOM SEG output on the real 3-slice CT series: it references the series and reads back voxel for voxel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pydicom_seg
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import LoadImage

from samsp_monai.data.dicom_seg import DicomSegReader
from samsp_monai.data.seg_writer import write_dicom_seg

CONFIGS = REPO / "bundle/configs"


def _read_back(path, series_dir) -> tuple[np.ndarray, np.ndarray, pydicom.Dataset]:
    """The SEG through the project's reader (on the series grid) and through pydicom-seg (z, y, x)."""
    ours = np.asarray(LoadImage(image_only=True, reader=DicomSegReader(reference_dir=series_dir))(str(path)))
    ds = pydicom.dcmread(path)
    return ours, pydicom_seg.MultiClassReader().read(ds).data, ds


def test_a_label_map_round_trips_through_dicom_seg(tmp_path):
    root = shared_data("dicom-ct-seg")
    label = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(root / "liver_spine_seg.nrrd")))
    path = write_dicom_seg(
        label.astype(np.uint16), root / "ct-3slice", {"1": "liver", "2": "spine"}, tmp_path / "s.dcm"
    )
    ours, theirs, ds = _read_back(path, root / "ct-3slice")
    np.testing.assert_array_equal(ours, label)
    np.testing.assert_array_equal(theirs.transpose(2, 1, 0), label)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spine"]
    referenced = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == pydicom.dcmread(root / "ct-3slice/01.dcm").SeriesInstanceUID


def test_inference_on_a_dicom_series_writes_a_seg_equal_to_the_nifti_label(tmp_path):
    root = shared_data("dicom-ct-seg")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "ct-3slice").symlink_to(root / "ct-3slice")
    configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "dicom_seg.json")]
    small = {"sam_variant": "vit_test", "image_size": 64, "modality": "CT", "num_workers": 0}
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(small)
    (tmp_path / "models").mkdir()
    torch.manual_seed(3)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, tmp_path / "models/model.pt")
    wf = ConfigWorkflow(
        config_file=configs, workflow_type=None, bundle_root=str(tmp_path), dataset_dir=str(inputs), **small
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    nifti = np.asarray(nib.load(tmp_path / "eval/ct-3slice_seg.nii.gz").dataobj)
    assert nifti.any(), "the random network predicted nothing: the comparison would be trivial"
    ours, theirs, ds = _read_back(tmp_path / "eval/ct-3slice_seg.dcm", root / "ct-3slice")
    np.testing.assert_array_equal(ours, nifti)
    np.testing.assert_array_equal(theirs.transpose(2, 1, 0), nifti)
    present = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    assert set(present.values()) <= {"anterior", "posterior"} and set(present) == set(np.unique(nifti)) - {0}
