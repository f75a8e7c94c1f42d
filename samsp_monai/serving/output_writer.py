"""Segmentations are written completely or not at all, and a write that fails is that case's failure.

MONAI's `SaveImage` logs a writer's failure at INFO and tries the next writer; ITK's can then leave a 0-byte
file on a full disk without raising, and a process killed mid-write leaves half a file under the final name.
`SaveSegmentationd` writes each segmentation with one writer (the first MONAI resolves for the extension) into
the run's temporary folder inside the output folder (`OutputFolder.writing_dir`, same file system), flushes it
to disk, reads it back and compares shape and foreground count with what was meant to be written, and only
then moves it under its final name (`os.replace`: atomic) and records its hash in `samsp_outputs.json`. Any
failure raises `OutputWriteError` naming the file and the cause; `CaseSkippingEvaluator` reports it as that
case's failure, so the run ends with exit status 1.

It is a `SaveImaged`, so MONAI Label drops it from the post-transforms as it drops MONAI's own saver.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, SaveImaged
from monai.utils import ImageMetaKey

from ..errors import SAMSPError
from .output_guard import OutputFolder, sha256


class OutputWriteError(SAMSPError, OSError):
    """One case's segmentation could not be written completely; nothing was left under its name."""


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_written(path: Path, expected: np.ndarray) -> None:
    """The file must read back with the expected shape and foreground count (an empty or cut file does not)."""
    if path.stat().st_size == 0:
        raise OSError(f"the writer left an empty file at {path}")
    back = np.asarray(LoadImage(image_only=True)(str(path)))
    if back.shape != expected.shape or np.count_nonzero(back) != np.count_nonzero(expected):
        raise OSError(
            f"read back with shape {back.shape} and {np.count_nonzero(back)} foreground voxels, "
            f"written with shape {expected.shape} and {np.count_nonzero(expected)}"
        )


def _cause(error: BaseException) -> str:
    """The innermost cause in one line, for a message: `OSError: [Errno 28] No space left on device` (ITK's
    many-line reports end with the line that says what happened)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


class SaveSegmentationd(SaveImaged):
    """Write each label map (channel-first, one channel) to `folder` under its planned name (module docstring)."""

    def __init__(
        self,
        keys: KeysCollection,
        folder: OutputFolder,
        output_dtype: DtypeLike | None = np.uint8,
        scale: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            output_dir=folder.path,
            output_postfix=folder.postfix,
            output_ext=folder.ext,
            output_dtype=output_dtype,
            scale=scale,
            resample=False,
            squeeze_end_dims=False,  # a volume of one slice stays a volume of one slice
            separate_folder=False,
            print_log=False,
            allow_missing_keys=allow_missing_keys,
        )
        self.saver.set_options(data_kwargs={"channel_dim": None})  # write() hands over the one channel alone
        self.folder = folder

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.write(d[key])
        return d

    def write(self, label: MetaTensor) -> Path:
        """Write, check, move into place and record one label map; raise `OutputWriteError` on any failure."""
        name = self.folder.name_for(label.meta[ImageMetaKey.FILENAME_OR_OBJ])
        final, temp = self.folder.path / name, self.folder.writing_dir / name
        saver = self.saver
        array = label[0]  # the one channel: written without a channel axis, as the input's spatial shape
        try:
            temp.parent.mkdir(exist_ok=True)
            writer = saver.writers[0](**saver.init_kwargs)  # one writer: no silent fallback to another
            writer.set_data_array(array, **saver.data_kwargs, spatial_ndim=array.ndim)
            if writer.data_obj.ndim > array.ndim:  # the channel axis some writers append: a 4D file otherwise
                writer.data_obj = writer.data_obj[..., 0]
            writer.set_metadata(meta_dict=label.meta, **saver.meta_kwargs)
            writer.write(str(temp), verbose=False)
            _sync(temp)
            scaled = array.detach().cpu().numpy() * (saver.init_kwargs["scale"] or 1)
            _check_written(temp, scaled)
            os.replace(temp, final)
        except Exception as e:  # any failure of this case's write is this case's failure
            temp.unlink(missing_ok=True)
            raise OutputWriteError(
                f"{final}: the segmentation could not be written ({_cause(e)}); nothing was left under that name"
            ) from e
        self.folder.add(name, sha256(final))
        return final
