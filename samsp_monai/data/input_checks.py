"""Refuse input files that would give a silent wrong result, with one message naming the file and the fix.

`CheckInputsd` runs in the shared `load_transforms` right after loading, so training, validation,
inference, evaluation and MONAI Label all see the same checks: finite intensities, integer labels within
the declared classes, image and label on one grid, the dimensions and channels the config expects. (DICOM
series are checked for completeness before they are read, by `dicom_series.CheckedSeriesReader`.)
`check_training_data` runs the same load chain over a training datalist before any network is built, so
every bad case is listed at once instead of one crash mid-epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

from ..errors import SAMSPError, find_user_error

logger = logging.getLogger(__name__)

MAX_LISTED = 20  # problems listed one a line before "... and N more"


class InputDataError(SAMSPError, ValueError):
    """A data file the bundle cannot use as it is; the message names it, says what is wrong and what to do."""


def source_of(data: Any) -> str:
    """The file or folder a loaded array came from, for messages."""
    source = data.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(data, MetaTensor) else None
    return str(source) if source else "<array without a file name>"


def _check_dims(array: torch.Tensor, role: str, channels: int, spatial_dims: int) -> None:
    """Channel-first arrays: `channels` channels and `spatial_dims` spatial axes, else a message saying what to do."""
    source, shape = source_of(array), tuple(array.shape[1:])
    if array.ndim - 1 != spatial_dims:
        if role == "label":
            fix = "a label must have the dimensions of its image"
        elif spatial_dims == 3:
            fix = "use bundle/configs/image2d.json for 2D images, or save it as a volume with one slice"
        else:
            fix = "drop bundle/configs/image2d.json from --config_file to segment volumes"
        raise InputDataError(
            f"{role} {source}: {array.ndim - 1}D (shape {shape}) but this config expects {spatial_dims}D; {fix}"
        )
    if array.shape[0] != channels:
        if role == "label":
            fix = "a label must be one map of class indices (not one-hot, not 4D)"
        elif spatial_dims == 3:
            fix = f"a 4D file (e.g. a time series) must be cut to the {channels}-channel volume to segment"
        elif array.shape[0] == 4:
            fix = "an RGBA image must be converted to RGB (drop the alpha channel)"
        else:
            fix = f"convert it to {channels} channel(s) or set --in_channels {array.shape[0]} (when training)"
        raise InputDataError(f"{role} {source}: {array.shape[0]} channels, expected {channels}; {fix}")


def _check_finite(image: torch.Tensor) -> None:
    bad = int((~torch.isfinite(image)).sum()) if image.is_floating_point() else 0
    if bad:
        raise InputDataError(
            f"image {source_of(image)}: {bad} of {image.numel()} voxels are NaN or infinite; "
            "replace them (e.g. with the background intensity) before use"
        )


def _check_label_values(label: torch.Tensor, num_classes: int) -> None:
    values = torch.unique(label)
    fractional = values[~torch.isfinite(values) | (values != torch.round(values))] if values.is_floating_point() else []
    if len(fractional):
        raise InputDataError(
            f"label {source_of(label)}: non-integer values {[float(v) for v in fractional[:5]]}; "
            "labels must hold class indices (0 = background); re-save it with nearest-neighbour resampling"
        )
    outside = values[(values < 0) | (values > num_classes)]
    if len(outside):
        raise InputDataError(
            f"label {source_of(label)}: values {[int(v) for v in outside[:10]]} outside 0..{num_classes} "
            f"(num_classes={num_classes}); set --num_classes and --class_names to match the labels, or fix the file"
        )


def _check_same_grid(image: torch.Tensor, label: torch.Tensor, affine_atol: float) -> None:
    if image.shape[1:] != label.shape[1:]:
        raise InputDataError(
            f"label {source_of(label)}: shape {tuple(label.shape[1:])} differs from its image {source_of(image)} "
            f"{tuple(image.shape[1:])}; the label must be drawn on the image's grid (same size), resample it first"
        )
    if isinstance(image, MetaTensor) and isinstance(label, MetaTensor):
        difference = float(torch.max(torch.abs(image.affine.double() - label.affine.double())))
        if difference > affine_atol:
            raise InputDataError(
                f"label {source_of(label)}: affine differs from its image {source_of(image)} by {difference:.4g} "
                f"(tolerance {affine_atol}); image and label must share origin, spacing and orientation"
            )


class CheckInputsd(MapTransform):
    """Refuse image/label pairs that would train or segment silently wrong (see the module docstring).

    Place it right after `EnsureChannelFirstd` (before resampling or intensity scaling, which hide the problems).
    `keys` are the image key then the optional label key; a missing label (inference) is skipped.

    Args:
        keys: image key, label key.
        num_classes: foreground classes; label values must be integers in 0..num_classes.
        in_channels: channels the image must have.
        spatial_dims: 3 for the volume configs, 2 for `image2d.json`.
        affine_atol: largest allowed difference between image and label affine entries (mm for the origin).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        in_channels: int,
        spatial_dims: int = 3,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key = (tuple(self.keys) + (None,))[:2]
        self.num_classes, self.in_channels = num_classes, in_channels
        self.spatial_dims, self.affine_atol = spatial_dims, affine_atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        _check_dims(image, "image", self.in_channels, self.spatial_dims)
        _check_finite(image)
        label = d.get(self.label_key) if self.label_key is not None else None
        if label is not None:
            _check_dims(label, "label", 1, self.spatial_dims)
            _check_label_values(label, self.num_classes)
            _check_same_grid(image, label, self.affine_atol)
        return d


def describe_failure(error: BaseException, case: str) -> str:
    """One line for a case that could not be used: a `SAMSPError`'s own message, else the innermost cause."""
    user_error = find_user_error(error)
    if user_error is not None:
        return str(user_error)
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else ""
    return (
        f"{case}: cannot be read ({type(cause).__name__}: {detail}); "
        "check that the file is complete and that its suffix matches its format"
    )


def case_name(item: Any) -> str:
    """A datalist item's files, for messages about a case whose files could not be read."""
    if not isinstance(item, Mapping):
        return str(item)
    files = {k: v for k, v in item.items() if k in ("image", "label")}
    return str(files.get("image")) if list(files) == ["image"] else " and ".join(map(str, files.values()))


def _has_foreground(item: Mapping[str, Any]) -> bool:
    label = item.get("label")
    return label is not None and bool(torch.as_tensor(label).ne(0).any())


def check_training_data(
    training: Sequence[Mapping[str, Any]],
    validation: Sequence[Mapping[str, Any]],
    load: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> None:
    """Load every case with the config's own load chain and refuse the data set while any case fails.

    Also refused: no training case at all, and training labels that are all empty (the model would learn to
    predict nothing and validation would report a meaningless Dice).
    """
    if not training:
        raise InputDataError("the training datalist is empty; check --datalist_file and --dataset_dir")
    logger.info("checking %d cases through the load chain before training", len(training) + len(validation))
    problems, with_foreground = [], 0
    for split, items in (("training", training), ("validation", validation)):
        for item in items:
            try:
                loaded = load(dict(item))
            except Exception as e:
                problems.append(f"  [{split}] {describe_failure(e, case_name(item))}")
                continue
            with_foreground += split == "training" and _has_foreground(loaded)
    cases = len(training) + len(validation)
    if problems:
        more = [f"  ... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        listed = problems[:MAX_LISTED] + more
        raise InputDataError(
            f"{len(problems)} of {cases} cases cannot be used:\n" + "\n".join(listed) + "\n"
            "Fix these files, or remove them from the datalist."
        )
    if not with_foreground:
        raise InputDataError(
            f"all {len(training)} training labels are empty (only background): nothing to learn. "
            "Check that the label files are the segmentations (not copies of the images or blank masks) "
            "and that --datalist_file pairs them with their images."
        )
    logger.info("checked %d cases (%d training, %d with foreground): all usable", cases, len(training), with_foreground)
