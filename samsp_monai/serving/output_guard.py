"""An output folder holds one model's segmentations, and a run never deletes or replaces a file it did not write.

`OutputFolder.claim`, in `initialize` of `inference.json`/`evaluate.json`, before any image is read:
- takes the folder's lock (`.samsp_outputs.lock`, as training locks its `bundle_root`): a second run into the
  same folder is refused with the holder named;
- removes the temporary folders of a writer that was killed (`.samsp-writing-<pid>`; see `output_writer`);
- names each input's segmentation so that no two inputs share one (`output_names`);
- refuses when a file under one of those names was not written by this tool (or was changed since): such a
  file is the user's, and even `--overwrite True` does not remove it;
- refuses when the folder holds segmentations of another model, unless `overwrite` is True, which removes
  those and only those.

What the tool wrote is recorded in `samsp_outputs.json`: the model (path, SHA-256 prefix) and, for every file
written, its name and SHA-256. A file counts as written by the tool only while its hash is the recorded one.
The record is written when the evaluator starts (`record_when_started`), after the data set is built, so a run
that fails before it can segment anything (a missing datalist, a wrong config stack) leaves no record behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai.engines import Workflow
from monai.utils import optional_import

from ..atomic import atomic_write_text
from ..data.datalist import IMAGE_SUFFIXES, LABEL_SUFFIXES
from ..data.seg_writer import series_folder
from ..errors import SAMSPError, require_bool
from ..training.runs import FolderLock
from ..training.tracking import file_digest

Events, _ = optional_import("ignite.engine", name="Events")
logger = logging.getLogger(__name__)

MANIFEST = "samsp_outputs.json"
LOCK = ".samsp_outputs.lock"
WRITING_PREFIX = ".samsp-writing-"  # temporary folder of one writing process, inside the output folder
SEGMENTATION_GLOB = "*_seg.*"
MAX_LISTED = 10  # file names listed in a message before "... and N more"


class OutputConflictError(SAMSPError, FileExistsError):
    """The output folder holds files this run must not replace or remove."""


def listed(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def sha256(path: Path) -> str:
    return file_digest(path, length=64) or ""


def input_path(item: Any) -> Path:
    """The file or DICOM series folder of an input (a path, a datalist item, or a `filename_or_obj`)."""
    source = item.get("image") if isinstance(item, Mapping) else item
    folder = series_folder(source)
    return Path(os.path.abspath(folder if folder is not None else str(source)))


def _stem_and_suffix(path: Path) -> tuple[str, str]:
    for suffix in (*LABEL_SUFFIXES, *IMAGE_SUFFIXES):
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)], suffix
    return path.name, ""  # a DICOM series folder


def output_names(inputs: Iterable[Any], postfix: str = "seg", ext: str = ".nii.gz") -> dict[Path, str]:
    """`<stem>_<postfix><ext>` per input; inputs sharing a stem (`case.nii.gz`, `case.nii`, `case.nrrd`) get their
    suffix into the name (`case_nii_gz_seg.nii.gz`, `case_nii_seg.nii.gz`, `case_nrrd_seg.nii.gz`), a DICOM series
    folder `_dicom`. Two inputs that would still share a name (one file name in two folders) are refused."""
    paths = sorted({input_path(item) for item in inputs})
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(_stem_and_suffix(path)[0].casefold(), []).append(path)
    names: dict[Path, str] = {}
    for group in by_stem.values():
        for path in group:
            stem, suffix = _stem_and_suffix(path)
            tag = "" if len(group) == 1 else "_" + (suffix.lstrip(".").replace(".", "_") or "dicom")
            names[path] = f"{stem}{tag}_{postfix}{ext}"
    owners: dict[str, list[Path]] = {}
    for path, name in names.items():
        owners.setdefault(name.casefold(), []).append(path)
    clashes = [f"  {', '.join(map(str, group))} -> {names[group[0]]}" for group in owners.values() if len(group) > 1]
    if clashes:
        raise OutputConflictError(
            "several inputs would be written to one output file:\n" + "\n".join(clashes) + "\n"
            "Rename the inputs (or segment them into different --output_dir folders)."
        )
    return names


class OutputFolder:
    """The output folder of one inference or evaluation run (see the module docstring)."""

    def __init__(self, output_dir: str | Path, postfix: str = "seg", ext: str = ".nii.gz") -> None:
        self.path, self.postfix, self.ext = Path(output_dir), postfix, ext
        self.lock = FolderLock(
            self.path / LOCK,
            purpose="inference or evaluation run",
            hint="wait for it to finish or choose another --output_dir",
        )
        self.names: dict[Path, str] = {}
        self.record: dict[str, Any] = {}

    @property
    def writing_dir(self) -> Path:
        """This process's temporary folder: files are written here, checked, then moved into `path`."""
        return self.path / f"{WRITING_PREFIX}{os.getpid()}"

    def claim(self, model_path: str | Path, inputs: Iterable[Any], overwrite: bool = False) -> None:
        """Lock the folder, plan the output names, refuse conflicts, and prepare the record (module docstring)."""
        require_bool("overwrite", overwrite)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise SAMSPError(f"model not found: {model_path}; train one first or pass --ckpt_path")
        self.names = output_names(inputs, self.postfix, self.ext)
        self._make_folder()
        try:
            self.lock.acquire()
        except OSError as e:
            raise SAMSPError(f"--output_dir {self.path} cannot be written ({e.strerror}); choose another") from e
        self._remove_stale_writing_dirs()
        digest = file_digest(model_path)
        recorded = self._read_manifest()
        ours = {
            name: h
            for name, h in dict(recorded.get("outputs") or {}).items()
            if (self.path / name).is_file() and sha256(self.path / name) == h
        }
        in_the_way = sorted(n for n in self.names.values() if (self.path / n).exists() and n not in ours)
        if in_the_way:
            raise OutputConflictError(
                f"{self.path}: {len(in_the_way)} file(s) under this run's output names were not written by "
                f"samsp-monai (not in {MANIFEST}, or changed since): {listed(in_the_way)}. Move them away or choose "
                "another --output_dir; --overwrite never removes files samsp-monai did not write."
            )
        if ours and recorded.get("model_sha256") != digest:
            if not overwrite:
                raise OutputConflictError(
                    f"{self.path} holds {len(ours)} segmentation(s) made by model {recorded.get('model')} (sha256 "
                    f"{recorded.get('model_sha256')}, {recorded.get('written')}), not by {model_path} (sha256 "
                    f"{digest}): {listed(ours)}. Choose another --output_dir, or pass --overwrite True to remove "
                    "these files (and only these)."
                )
            for name in ours:
                (self.path / name).unlink()
            logger.warning(
                "--overwrite: removed %d segmentation(s) of the previous model from %s", len(ours), self.path
            )
            ours = {}
        others = sorted(p.name for p in self.path.glob(SEGMENTATION_GLOB) if p.name not in ours)
        if others:
            logger.warning("%s: left alone, not written by samsp-monai: %s", self.path, listed(others))
        self.record = {
            "model": str(model_path.resolve()),
            "model_sha256": digest,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "outputs": ours,
        }

    def record_when_started(self, evaluator: Workflow) -> None:
        """Write the record of `claim` when `evaluator` starts (see the module docstring)."""
        evaluator.add_event_handler(Events.STARTED, lambda _: self._save_manifest())

    def name_for(self, source: Any) -> str:
        """The planned output file name of an input (its `filename_or_obj`)."""
        key = input_path(source)
        if key not in self.names:
            raise SAMSPError(f"{key}: not among the inputs this run planned outputs for ({self.path})")
        return self.names[key]

    def add(self, name: str, digest: str) -> None:
        """Record a file moved into the folder, so a later run knows it may replace or remove it."""
        self.record["outputs"][name] = digest
        self._save_manifest()

    def release(self) -> None:
        shutil.rmtree(self.writing_dir, ignore_errors=True)
        self.lock.release()

    def _make_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise SAMSPError(f"--output_dir {self.path} is a file, not a folder; choose a folder for the outputs")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SAMSPError(f"--output_dir {self.path} cannot be created ({e.strerror}); choose another") from e

    def _remove_stale_writing_dirs(self) -> None:
        """Only under the lock: no other writer can be running, so any temporary folder is a killed run's."""
        for stale in sorted(self.path.glob(f"{WRITING_PREFIX}*")):
            shutil.rmtree(stale, ignore_errors=True)
            logger.warning(
                "removed %s, left by an interrupted run (none of its files had been moved into place)", stale
            )

    def _read_manifest(self) -> dict[str, Any]:
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return {}
        try:
            recorded = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            logger.warning("%s cannot be read (%s): its files count as not written by samsp-monai", manifest, e)
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _save_manifest(self) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(self.record, indent=2) + "\n")
