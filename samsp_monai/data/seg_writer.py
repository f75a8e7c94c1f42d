"""Predicted labels of a DICOM series as a DICOM SEG object that references that series (for OHIF and PACS).

`write_dicom_seg` encodes a label map on the series' voxel grid with pydicom-seg (one segment per class, named
from the bundle's `class_names`); `SaveDicomSegd` does it at the end of inference for inputs that are DICOM
series folders (other inputs are left to `SaveImaged`). Add `bundle/configs/dicom_seg.json` to the inference
command to get `<series folder name>_seg.dcm` beside the NIfTI label.
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from ..errors import SAMSPError
from .dicom_seg import _series_in

ANATOMICAL_STRUCTURE = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
TISSUE = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}


def seg_template(class_names: Mapping[str | int, str]) -> pydicom.Dataset:
    """The SEG's descriptive header: one AUTOMATIC segment per class, labelled with the class name."""
    segments = [
        {
            "labelID": int(label),
            "SegmentLabel": name,
            "SegmentDescription": name,
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "SAM-SP",
            "SegmentedPropertyCategoryCodeSequence": ANATOMICAL_STRUCTURE,
            "SegmentedPropertyTypeCodeSequence": TISSUE,
        }
        for label, name in class_names.items()
    ]
    return pydicom_seg.template.from_dcmqi_metainfo(
        {
            "ContentCreatorName": "samsp-monai",
            "ContentLabel": "SAMSP",
            "ContentDescription": "SAM-SP prompt-free segmentation",
            "SeriesDescription": "SAM-SP segmentation",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1",
            "segmentAttributes": [segments],
        }
    )


def series_files(folder: str | Path) -> tuple[str, ...]:
    """The files of the one DICOM series in `folder`, in GDCM's slice order (the order ITKReader loads)."""
    series = _series_in(str(folder))
    if len(series) != 1:
        raise SAMSPError(f"{folder}: {len(series)} DICOM series in the folder; a SEG references exactly one")
    return next(iter(series.values()))


def write_dicom_seg(
    label: np.ndarray, series_dir: str | Path, class_names: Mapping[str | int, str], path: str | Path
) -> Path:
    """Write `label` (x, y, z: the layout MONAI's ITKReader gives the series in `series_dir`) as a DICOM SEG
    referencing that series. Refuses a label of another grid, or with values that are no declared class."""
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
    image = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint16))
    image.CopyInformation(reference)
    writer = pydicom_seg.MultiClassWriter(
        template=seg_template(class_names), inplane_cropping=False, skip_empty_slices=False, skip_missing_segment=True
    )
    seg = writer.write(image, [pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


class SaveDicomSegd(MapTransform):
    """Inference post-transform: for an input that was a DICOM series folder, write the label (after geometry
    restoration, shape (1, x, y, z)) as `<output_dir>/<folder name>_<postfix>.dcm`."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        class_names: Mapping[str | int, str],
        output_postfix: str = "seg",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.class_names, self.output_postfix = Path(output_dir), dict(class_names), output_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            folder = series_folder(d[key].meta["filename_or_obj"])
            if folder is None:
                continue
            label = np.asarray(d[key].detach().cpu())[0].round().astype(np.uint16)
            write_dicom_seg(
                label, folder, self.class_names, self.output_dir / f"{folder.name}_{self.output_postfix}.dcm"
            )
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
