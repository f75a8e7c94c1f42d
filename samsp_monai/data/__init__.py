"""Data layer: datalists, image/DICOM reading and writing, input checks and transforms (imports model and base)."""

from . import (
    datalist,
    demo_data,
    dicom_seg,
    dicom_series,
    input_checks,
    masks,
    seg_writer,
    transforms,
)

__all__ = [
    "datalist",
    "demo_data",
    "dicom_seg",
    "dicom_series",
    "input_checks",
    "masks",
    "seg_writer",
    "transforms",
]
