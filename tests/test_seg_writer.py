"""DICOM SEG output on the real 3-slice CT series: it references the series in its Frame of Reference, reads back
voxel for voxel, carries each class's codes and colour, passes dicom3tools' dciodvfy, and an empty prediction is
written as a valid SEG too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pydicom_seg
import pytest
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import LoadImage

from samsp_monai.data.dicom_seg import DicomSegReader
from samsp_monai.data.seg_writer import EMPTY_DESCRIPTION, SaveDicomSegd, write_dicom_seg
from samsp_monai.errors import SAMSPError

CONFIGS = REPO / "bundle/configs"
TISSUE = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}
LIVER = {"CodeValue": "10200004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Liver"}
SPINE = {"CodeValue": "421060004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Spine"}
BONE = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
# The dcmqi reference (liver.dcm) codes liver as category Tissue, type Liver in SNOMED RT (SRT T-D0050,
# T-62000); dciodvfy calls SRT deprecated, so the same concepts are written with their SNOMED CT codes.
SRT_TO_SCT = {"T-D0050": "85756007", "T-62000": "10200004"}
CODES = {
    "1": {"name": "liver", "category": TISSUE, "type": LIVER, "rgb": [221, 130, 101]},
    "2": {"name": "spine", "category": BONE, "type": SPINE, "rgb": [241, 214, 145]},
}
NAMES = {"1": "liver", "2": "spine"}


def dciodvfy_errors(path) -> list[str]:
    """The Error lines dicom3tools' IOD validator reports for `path` (its warnings are not failures)."""
    if shutil.which("dciodvfy") is None:
        message = "dciodvfy not found (apt-get install dicom3tools; .ci/run installs it)"
        if os.environ.get("SAMSP_REQUIRE_DATA", "") not in ("", "0"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _read_back(path, series_dir) -> tuple[np.ndarray, np.ndarray, pydicom.Dataset]:
    """The SEG through the project's reader (on the series grid) and through pydicom-seg (z, y, x)."""
    ours = np.asarray(LoadImage(image_only=True, reader=DicomSegReader(reference_dir=series_dir))(str(path)))
    ds = pydicom.dcmread(path)
    return ours, pydicom_seg.MultiClassReader().read(ds).data, ds


def _code(item) -> tuple[str, str, str]:
    return item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning


def test_a_label_map_round_trips_through_dicom_seg(tmp_path):
    root = shared_data("dicom-ct-seg")
    label = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(root / "liver_spine_seg.nrrd")))
    path = write_dicom_seg(label.astype(np.uint16), root / "ct-3slice", NAMES, CODES, tmp_path / "s.dcm")
    ours, theirs, ds = _read_back(path, root / "ct-3slice")
    np.testing.assert_array_equal(ours, label)
    np.testing.assert_array_equal(theirs.transpose(2, 1, 0), label)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spine"]
    source = pydicom.dcmread(root / "ct-3slice/01.dcm")
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert not any(k.startswith("ClinicalTrial") for k in ds.dir())
    assert dciodvfy_errors(path) == []


def test_segments_carry_the_metadata_codes_and_colours_coded_as_the_dcmqi_reference(tmp_path):
    root = shared_data("dicom-ct-seg")
    label = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(root / "liver_spine_seg.nrrd")))
    ds = pydicom.dcmread(write_dicom_seg(label.astype(np.uint16), root / "ct-3slice", NAMES, CODES, tmp_path / "s.dcm"))
    liver, spine = ds.SegmentSequence
    reference = pydicom.dcmread(root / "liver.dcm", stop_before_pixels=True).SegmentSequence[0]
    for ours, theirs in [
        (liver.SegmentedPropertyCategoryCodeSequence[0], reference.SegmentedPropertyCategoryCodeSequence[0]),
        (liver.SegmentedPropertyTypeCodeSequence[0], reference.SegmentedPropertyTypeCodeSequence[0]),
    ]:
        assert (ours.CodeValue, ours.CodingSchemeDesignator) == (SRT_TO_SCT[theirs.CodeValue], "SCT")
        assert ours.CodeMeaning == theirs.CodeMeaning
    assert _code(spine.SegmentedPropertyTypeCodeSequence[0]) == tuple(SPINE.values())
    assert _code(spine.SegmentedPropertyCategoryCodeSequence[0]) == tuple(BONE.values())
    assert liver.RecommendedDisplayCIELabValue != spine.RecommendedDisplayCIELabValue
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"AUTOMATIC"}


def test_an_empty_prediction_is_a_valid_seg_that_says_so(tmp_path):
    root = shared_data("dicom-ct-seg")
    empty = np.zeros((512, 512, 3), np.uint16)
    path = write_dicom_seg(empty, root / "ct-3slice", NAMES, CODES, tmp_path / "empty.dcm")
    ours, theirs, ds = _read_back(path, root / "ct-3slice")
    assert not ours.any() and not theirs.any()
    assert ds.ContentDescription == EMPTY_DESCRIPTION
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spine"]
    assert int(ds.NumberOfFrames) == 2  # one all-zero frame per declared class
    assert ds.FrameOfReferenceUID == pydicom.dcmread(root / "ct-3slice/01.dcm").FrameOfReferenceUID
    assert dciodvfy_errors(path) == []


def test_a_folder_with_a_normal_and_an_empty_prediction_is_fully_written(tmp_path):
    root = shared_data("dicom-ct-seg")
    label = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(root / "liver_spine_seg.nrrd")))
    saver = SaveDicomSegd("pred", tmp_path / "out", NAMES, CODES)
    for name, volume in [("normal", label), ("empty", np.zeros_like(label))]:
        (tmp_path / name).symlink_to(root / "ct-3slice")
        pred = MetaTensor(torch.as_tensor(volume[None]), meta={"filename_or_obj": str(tmp_path / name)})
        saver({"pred": pred})
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["empty_seg.dcm", "normal_seg.dcm"]
    assert all(dciodvfy_errors(tmp_path / "out" / p) == [] for p in written)
    np.testing.assert_array_equal(_read_back(tmp_path / "out/normal_seg.dcm", root / "ct-3slice")[0], label)


def test_classes_without_codes_or_with_another_tasks_codes_are_refused_before_any_case():
    with pytest.raises(SAMSPError, match=r"class_codes\['2'\] is missing: class 2 \('spine'\)"):
        SaveDicomSegd("pred", "out", NAMES, {"1": CODES["1"]})
    with pytest.raises(SAMSPError, match=r"describes class 'liver', but class_names\['1'\] is 'polyp'"):
        SaveDicomSegd("pred", "out", {"1": "polyp"}, CODES)


def test_the_metadata_codes_every_class_of_the_default_task():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    names = json.loads((CONFIGS / "inference.json").read_text())["class_names"]
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert {k: v["name"] for k, v in meta["class_codes"].items()} == names == {k: channel_def[k] for k in names}
    assert all(v["type"]["CodingSchemeDesignator"] == "SCT" for v in meta["class_codes"].values())


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
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in ds.SegmentSequence} == {"Hippocampus"}
    assert ds.FrameOfReferenceUID == pydicom.dcmread(root / "ct-3slice/01.dcm").FrameOfReferenceUID
    assert dciodvfy_errors(tmp_path / "eval/ct-3slice_seg.dcm") == []
