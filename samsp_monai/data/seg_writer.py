"""Predicted labels of a DICOM series as a DICOM SEG object that references that series (for OHIF and PACS).

`write_dicom_seg` encodes a label map on the series' voxel grid with pydicom-seg: one segment per class, named
from the bundle's `class_names` and coded (category, type, optional type modifier, display colour) from the
metadata's `class_codes`. `SaveDicomSegd` does it at the end of inference for inputs that are DICOM series
folders (other inputs are left to `SaveImaged`). Add `bundle/configs/dicom_seg.json` to the inference command
to get `<series folder name>_seg.dcm` beside the NIfTI label.

Three things pydicom-seg 0.4.1 does not do right are fixed here, around the library:
- it gives the SEG a new Frame of Reference UID (razorx89/pydicom-seg#48); a viewer then may not overlay the
  SEG on its series, so the source series' UID is put back;
- it refuses a label map without any label; an empty prediction is a normal answer of a prompt-free model, so
  it is written as a valid SEG that declares every class with one all-zero frame and says "no segment found"
  in its ContentDescription;
- its template requires Clinical Trial Series attributes; they are removed unless the source series has them.
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from ..atomic import atomic_write
from ..errors import SAMSPError
from .dicom_seg import _series_in

CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
CLINICAL_TRIAL_SERIES = ("ClinicalTrialSeriesID", "ClinicalTrialTimePointID", "ClinicalTrialCoordinatingCenterName")
EMPTY_DESCRIPTION = "SAM-SP prompt-free segmentation: no segment found"


def _code(entry: Any, where: str) -> dict[str, str]:
    if not isinstance(entry, Mapping) or any(not isinstance(entry.get(k), str) or not entry[k] for k in CODE_KEYS):
        raise SAMSPError(f"{where} must be a code with non-empty {', '.join(CODE_KEYS)}, got {entry!r}")
    return {k: entry[k] for k in CODE_KEYS}


def segment_attributes(
    class_names: Mapping[str | int, str], class_codes: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """dcmqi segment attributes, one per class: label from `class_names`, codes and colour from the metadata's
    `class_codes` (keyed by class index). Refuses a class without codes, or codes written for another class name,
    so a task's classes can never be written with another task's codes."""
    segments = []
    for label, name in class_names.items():
        codes = class_codes.get(str(label))
        where = f"metadata class_codes[{str(label)!r}]"
        if not isinstance(codes, Mapping):
            raise SAMSPError(f"{where} is missing: class {label} ({name!r}) has no DICOM codes; add them to metadata")
        if codes.get("name") != name:
            raise SAMSPError(
                f"{where} describes class {codes.get('name')!r}, but class_names[{str(label)!r}] is {name!r}: "
                "the metadata belongs to another task (pass that task's metadata with --meta_file)"
            )
        rgb = codes.get("rgb")
        if not (isinstance(rgb, Sequence) and len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
            raise SAMSPError(f"{where}['rgb'] must be three integers in 0..255, got {rgb!r}")
        segment = {
            "labelID": int(label),
            "SegmentLabel": name,
            "SegmentDescription": str(codes.get("description", name)),
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "SAM-SP",
            "SegmentedPropertyCategoryCodeSequence": _code(codes.get("category"), f"{where}['category']"),
            "SegmentedPropertyTypeCodeSequence": _code(codes.get("type"), f"{where}['type']"),
            "recommendedDisplayRGBValue": list(rgb),
        }
        if "type_modifier" in codes:
            segment["SegmentedPropertyTypeModifierCodeSequence"] = _code(
                codes["type_modifier"], f"{where}['type_modifier']"
            )
        segments.append(segment)
    return segments


def seg_template(class_names: Mapping[str | int, str], class_codes: Mapping[str, Mapping[str, Any]]) -> pydicom.Dataset:
    """The SEG's descriptive header: one AUTOMATIC segment per class. pydicom-seg's template needs the two
    Clinical Trial Series IDs (empty here); `write_dicom_seg` removes them from the SEG again."""
    return pydicom_seg.template.from_dcmqi_metainfo(
        {
            "ContentCreatorName": "",  # a person name (PN); an algorithm made this SEG
            "ContentLabel": "SAMSP",
            "ContentDescription": "SAM-SP prompt-free segmentation",
            "SeriesDescription": "SAM-SP segmentation",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "ClinicalTrialSeriesID": "",
            "ClinicalTrialTimePointID": "",
            "segmentAttributes": [segment_attributes(class_names, class_codes)],
        }
    )


def series_files(folder: str | Path) -> tuple[str, ...]:
    """The files of the one DICOM series in `folder`, in GDCM's slice order (the order ITKReader loads)."""
    series = _series_in(str(folder))
    if len(series) != 1:
        raise SAMSPError(f"{folder}: {len(series)} DICOM series in the folder; a SEG references exactly one")
    return next(iter(series.values()))


def write_dicom_seg(
    label: np.ndarray,
    series_dir: str | Path,
    class_names: Mapping[str | int, str],
    class_codes: Mapping[str, Mapping[str, Any]],
    path: str | Path,
) -> Path:
    """Write `label` (x, y, z: the layout MONAI's ITKReader gives the series in `series_dir`) as a DICOM SEG
    referencing that series, in its Frame of Reference. An all-zero label gives a SEG that declares every class
    with one empty frame and says so (module docstring). Refuses a label of another grid, or with values that
    are no declared class."""
    files = series_files(series_dir)
    reference = sitk.ReadImage(list(files))
    if tuple(label.shape) != tuple(reference.GetSize()):
        raise SAMSPError(
            f"{path}: label of shape {tuple(label.shape)} does not lie on the grid of its DICOM series "
            f"{tuple(reference.GetSize())} ({series_dir})"
        )
    unknown = set(np.unique(label).tolist()) - {0} - {int(k) for k in class_names}
    if unknown:
        raise SAMSPError(f"{path}: label values {sorted(unknown)} are not in class_names {dict(class_names)}")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    frames_of_reference = {str(ds.get("FrameOfReferenceUID", "")) for ds in sources}
    if len(frames_of_reference) != 1 or "" in frames_of_reference:
        raise SAMSPError(
            f"{series_dir}: a SEG needs the series' one Frame of Reference UID, found {sorted(frames_of_reference)}"
        )
    empty = not label.any()
    if empty:  # pydicom-seg refuses an empty map: encode one voxel per class on the first slice, then clear them
        label = np.zeros_like(label)
        for i, k in enumerate(sorted(int(k) for k in class_names)):
            label[i % label.shape[0], i // label.shape[0], 0] = k
    image = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint16))
    image.CopyInformation(reference)
    writer = pydicom_seg.MultiClassWriter(
        template=seg_template(class_names, class_codes),
        inplane_cropping=False,
        skip_empty_slices=empty,
        skip_missing_segment=True,
    )
    seg = writer.write(image, sources)
    if empty:
        seg.PixelData = bytes(len(seg.PixelData))
        seg.ContentDescription = EMPTY_DESCRIPTION
    seg.FrameOfReferenceUID = frames_of_reference.pop()
    for keyword in CLINICAL_TRIAL_SERIES:
        if keyword in sources[0]:
            setattr(seg, keyword, sources[0].data_element(keyword).value)
        elif keyword in seg:
            delattr(seg, keyword)
    path = Path(path)
    atomic_write(path, seg.save_as)  # complete or absent: never half a SEG under its name
    return path


class SaveDicomSegd(MapTransform):
    """Inference post-transform: for an input that was a DICOM series folder, write the label (after geometry
    restoration, shape (1, x, y, z)) as `<output_dir>/<folder name>_<postfix>.dcm`."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        class_names: Mapping[str | int, str],
        class_codes: Mapping[str, Mapping[str, Any]],
        output_postfix: str = "seg",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.class_names, self.output_postfix = Path(output_dir), dict(class_names), output_postfix
        self.class_codes = dict(class_codes)
        segment_attributes(self.class_names, self.class_codes)  # a class without codes fails before any case runs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            folder = series_folder(d[key].meta["filename_or_obj"])
            if folder is None:
                continue
            label = np.asarray(d[key].detach().cpu())[0].round().astype(np.uint16)
            path = self.output_dir / f"{folder.name}_{self.output_postfix}.dcm"
            write_dicom_seg(label, folder, self.class_names, self.class_codes, path)
        return d


def series_folder(source: Any) -> Path | None:
    """The folder of a DICOM series input from its `filename_or_obj`: the folder itself, or its files (a list,
    or that list's string form after MONAI's batching); None for any other input."""
    if isinstance(source, str) and source.startswith(("(", "[")):
        source = ast.literal_eval(source)
    paths = [Path(str(p)) for p in ensure_tuple(source)]
    if paths[0].is_dir():
        return paths[0]
    return paths[0].parent if len(paths) > 1 else None
