"""Build MONAI datalists (``{"training": [...], "validation": [...]}``) from common folder layouts.

Paths are stored relative to the data root, so one JSON works wherever the data is mounted:
``monai.data.load_decathlon_datalist(path, True, "training", base_dir=root)``.

Every image must have exactly one label and every label an image: anything unmatched raises
:class:`UnmatchedFilesError` listing all offending files, because silently dropping cases skews a split.

Layouts:

- ``msd``: ``imagesTr/*.nii.gz`` (or ``.nii``) paired with ``labelsTr/`` by case name (macOS ``._*`` files ignored).
- ``dicom``: each direct sub-folder of the root holding DICOM files is one series (the image entry is the
  folder). Its label is the single file matching ``label_glob`` (relative to the root) after replacing
  ``{series}`` with the folder name; the default ``{series}.*`` finds ``<root>/<series>.nrrd`` etc.,
  ``labels/{series}.*`` a labels folder, and a literal name (``liver_seg.nrrd``) suits a single series.
  Candidate labels are the files matching ``label_glob`` with ``{series}`` read as ``*`` and a label
  suffix (NIfTI, NRRD, MetaImage, DICOM SEG ``.dcm``); folders holding candidate labels are not series.
- ``images``: 2D ``images/`` and ``masks/`` folders paired by file stem (png/jpg/jpeg/bmp/tif/tiff),
  as in Kvasir-SEG.

Split: name lists (one case name a line: MSD/2D file stem, DICOM series folder name) when given, or
``train.txt``/``val.txt`` in the root when both exist; otherwise a seeded random split.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from monai.data import load_decathlon_datalist

from ..atomic import atomic_write_text
from ..errors import SAMSPError, require_bool
from .dicom_series import is_dicom_file

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES = (*VOLUME_SUFFIXES, ".dcm")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_LISTED = 10  # cases named in a message before "... and N more"


class Case(NamedTuple):
    """One image/label pair; ``name`` is what split lists refer to."""

    name: str
    image: Path
    label: Path


class UnmatchedFilesError(SAMSPError, ValueError):
    """Images without labels or labels without images; the message lists every one of them."""

    def __init__(self, images_without_label: Iterable[Path], labels_without_image: Iterable[Path]):
        self.images_without_label = sorted(images_without_label)
        self.labels_without_image = sorted(labels_without_image)
        lines = [f"  image without label: {p}" for p in self.images_without_label]
        lines += [f"  label without image: {p}" for p in self.labels_without_image]
        super().__init__(f"{len(lines)} unmatched file(s):\n" + "\n".join(lines))


class DataFolderError(SAMSPError, FileNotFoundError):
    """A data folder that is missing or holds nothing to segment."""


class EmptyDatalistError(SAMSPError, ValueError):
    """The layout found no case at all: a wrong root or layout, not a data set to train on."""


LAYOUT_HINTS = {
    "msd": "expected imagesTr/*.nii.gz (or .nii) with same-named files in labelsTr/",
    "dicom": "expected one sub-folder of DICOM files per series, each with a label file matching --label_glob",
    "images": "expected images/ and masks/ folders of PNG/JPG/BMP/TIF files with matching names",
}


def _visible_files(folder: Path) -> list[Path]:
    """Regular files, minus hidden ones and macOS ``._*`` resource forks that share the data's names."""
    if not folder.is_dir():
        raise DataFolderError(f"folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _index(files: Iterable[Path], key) -> dict[str, Path]:
    """Map case name -> file, refusing two files with one name (e.g. ``a.png`` and ``a.jpg``)."""
    index: dict[str, Path] = {}
    clashes: list[str] = []
    for path in files:
        name = key(path)
        if name in index:
            clashes.append(f"  {index[name]} and {path}")
        index[name] = path
    if clashes:
        raise ValueError("several files share one case name:\n" + "\n".join(clashes))
    return index


def _pair(images: Mapping[str, Path], labels: Mapping[str, Path]) -> list[Case]:
    missing = [images[n] for n in images.keys() - labels.keys()]
    orphans = [labels[n] for n in labels.keys() - images.keys()]
    if missing or orphans:
        raise UnmatchedFilesError(missing, orphans)
    return [Case(n, images[n], labels[n]) for n in sorted(images)]


def _strip_suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    name = path.name
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def msd_cases(root: Path) -> list[Case]:
    """Medical Segmentation Decathlon layout: ``imagesTr/x.nii.gz`` <-> ``labelsTr/x.nii.gz`` (``.nii`` too)."""
    root = Path(root)

    def nifti(folder: str) -> dict[str, Path]:
        files = [p for p in _visible_files(root / folder) if _strip_suffix(p, NIFTI_SUFFIXES) is not None]
        return _index(files, lambda p: _strip_suffix(p, NIFTI_SUFFIXES))

    return _pair(nifti("imagesTr"), nifti("labelsTr"))


def image_cases(root: Path, images_dir: str = "images", masks_dir: str = "masks") -> list[Case]:
    """2D layout: ``images/x.jpg`` <-> ``masks/x.png`` (any supported suffix, matched by stem)."""
    root = Path(root)

    def by_stem(folder: str) -> dict[str, Path]:
        files = [p for p in _visible_files(root / folder) if _strip_suffix(p, IMAGE_SUFFIXES) is not None]
        return _index(files, lambda p: _strip_suffix(p, IMAGE_SUFFIXES))

    return _pair(by_stem(images_dir), by_stem(masks_dir))


def _is_series_folder(path: Path) -> bool:
    """A folder holding DICOM files: one image series (its files are read together)."""
    return path.is_dir() and any(map(is_dicom_file, _visible_files(path)))


def dicom_cases(root: Path, label_glob: str = "{series}.*") -> list[Case]:
    """DICOM series folders paired with label files by ``label_glob`` (see the module docstring)."""
    root = Path(root)

    def label_files(pattern: str) -> list[Path]:
        return sorted(p for p in root.glob(pattern) if p.is_file() and _strip_suffix(p, LABEL_SUFFIXES))

    candidates = label_files(label_glob.replace("{series}", "*"))
    label_folders = {p.parent for p in candidates}
    images = {d.name: d for d in sorted(root.iterdir()) if d not in label_folders and _is_series_folder(d)}
    labels: dict[str, Path] = {}
    clashes: list[str] = []
    for name in images:
        matches = label_files(label_glob.replace("{series}", glob.escape(name)))
        if len(matches) > 1:
            clashes.append(f"  series {name} matches {', '.join(map(str, matches))}")
        elif matches:
            labels[name] = matches[0]
    owners: dict[Path, list[str]] = {}
    for name, label in labels.items():
        owners.setdefault(label, []).append(name)
    clashes += [f"  {label} matches series {', '.join(ns)}" for label, ns in owners.items() if len(ns) > 1]
    if clashes:
        raise ValueError(f"ambiguous labels for label_glob {label_glob!r}:\n" + "\n".join(clashes))
    missing = [images[n] for n in images.keys() - labels.keys()]
    orphans = [p for p in candidates if p not in owners]
    if missing or orphans:
        raise UnmatchedFilesError(missing, orphans)
    return [Case(n, images[n], labels[n]) for n in sorted(images)]


def read_names(path: Path) -> list[str]:
    """One case name a line; blank lines ignored."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def split_cases(
    cases: list[Case],
    val_fraction: float = 0.2,
    seed: int = 0,
    train_names: list[str] | None = None,
    val_names: list[str] | None = None,
) -> dict[str, list[Case]]:
    """Split by name lists (one list alone means "the rest" for the other), else randomly with ``seed``.

    Names in a list but not in the data, or in both lists, raise, so an outdated list cannot quietly shrink a
    split. With two lists, the cases in neither are left out (a subset is a common wish); the count is logged.
    """
    by_name = {c.name: c for c in cases}
    if train_names is None and val_names is None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        names = sorted(by_name)
        val = set(random.Random(seed).sample(names, round(len(names) * val_fraction)))
        train = set(names) - val
    else:
        listed = set(train_names or []) | set(val_names or [])
        problems = [f"  listed but not in the data: {n}" for n in sorted(listed - by_name.keys())]
        problems += [f"  in both lists: {n}" for n in sorted(set(train_names or []) & set(val_names or []))]
        if problems:
            raise ValueError("split lists do not match the data:\n" + "\n".join(problems))
        val = set(val_names) if val_names is not None else by_name.keys() - set(train_names)
        train = set(train_names) if train_names is not None else by_name.keys() - val
        if len(train) + len(val) < len(by_name):
            logger.info(
                "left out %d of %d cases, named in neither list", len(by_name) - len(train) - len(val), len(cases)
            )
    return {"training": [by_name[n] for n in sorted(train)], "validation": [by_name[n] for n in sorted(val)]}


def limit_cases(splits: Mapping[str, list[Case]], limit: int, seed: int = 0) -> dict[str, list[Case]]:
    """A seeded random subset of `limit` cases that keeps the splits' shares (one validation case at least, when the
    split has any): a quick trial run on a large data set."""
    total = sum(len(cases) for cases in splits.values())
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if limit >= total:
        return dict(splits)
    val = splits["validation"]
    n_val = min(len(val), max(1 if val else 0, round(limit * len(val) / total)))
    rng = random.Random(seed)
    kept = {
        "training": rng.sample(splits["training"], min(len(splits["training"]), limit - n_val)),
        "validation": rng.sample(val, n_val),
    }
    logger.info("--limit %d: kept %d of %d cases (seed %d)", limit, sum(map(len, kept.values())), total, seed)
    return {key: sorted(cases) for key, cases in kept.items()}


def to_datalist(splits: Mapping[str, list[Case]], root: Path) -> dict[str, list[dict[str, str]]]:
    """Relative POSIX paths so the JSON is portable across machines and operating systems."""
    root = Path(root)
    return {
        key: [
            {"image": c.image.relative_to(root).as_posix(), "label": c.label.relative_to(root).as_posix()}
            for c in cases
        ]
        for key, cases in splits.items()
    }


def write_json_atomic(obj: object, path: Path) -> None:
    """The datalist as indented JSON, written atomically so readers never see a partial file."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def build_datalist(
    layout: str,
    root: Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_list: Path | None = None,
    val_list: Path | None = None,
    limit: int | None = None,
    **layout_options: str,
) -> dict[str, list[dict[str, str]]]:
    """Find, pair and split the cases of ``root`` (``limit``: keep that many, see `limit_cases`); ``layout_options``
    go to the layout's finder."""
    root = Path(root).resolve()
    finders = {"msd": msd_cases, "dicom": dicom_cases, "images": image_cases}
    if layout not in finders:
        raise ValueError(f"unknown layout {layout!r}, expected one of {sorted(finders)}")
    cases = finders[layout](root, **layout_options)
    if not cases:
        raise EmptyDatalistError(f"no {layout!r} cases found in {root}: {LAYOUT_HINTS[layout]}")
    if train_list is None and val_list is None and (root / "train.txt").is_file() and (root / "val.txt").is_file():
        train_list, val_list = root / "train.txt", root / "val.txt"
    splits = split_cases(
        cases,
        val_fraction,
        seed,
        read_names(train_list) if train_list else None,
        read_names(val_list) if val_list else None,
    )
    return to_datalist(limit_cases(splits, limit, seed) if limit is not None else splits, root)


def load_datalist(datalist_file: str | Path, dataset_dir: str | Path, split: str) -> list[dict]:
    """MONAI's `load_decathlon_datalist` for `split`, with a missing file or split named in one line and the fix.

    A wrong `--dataset_dir`, a datalist never written, or override files stacked before `evaluate.json` (whose own
    `dataset_dir` then wins) all end here; MONAI's own error is a 60-line traceback about a config expression.
    """
    path = Path(datalist_file)
    if not path.is_file():
        raise DataFolderError(
            f"datalist not found: {path} (dataset_dir: {dataset_dir}). Write one with `python scripts/make_datalist.py "
            f"msd|dicom|images {dataset_dir} -o {path}` or pass --datalist_file FILE; check --dataset_dir, and "
            "put override files (demo.json, image2d.json, ...) last in --config_file"
        )
    try:
        return load_decathlon_datalist(str(path), True, split, base_dir=str(dataset_dir))
    except json.JSONDecodeError as err:
        raise DataFolderError(
            f'{path}: not valid JSON ({err}); a datalist is {{"training": [{{"image": ..., "label": ...}}], '
            '"validation": [...]}; write it with scripts/make_datalist.py'
        ) from err
    except ValueError as err:  # MONAI: "Data list ... not specified in ..."
        raise DataFolderError(f"{path}: {err}; write it with scripts/make_datalist.py or choose another split") from err


def inference_inputs(folder: str | Path) -> list[str]:
    """What `inference.json` segments at `folder`: its volume and 2D image files and DICOM series sub-folders; or
    `folder` itself when it is one such file or one series folder (single-case inference)."""
    folder = Path(folder)
    if folder.is_file():
        if _strip_suffix(folder, IMAGE_SUFFIXES + VOLUME_SUFFIXES) is None:
            raise DataFolderError(
                f"{folder}: not an image ({', '.join(IMAGE_SUFFIXES)}) or volume ({', '.join(VOLUME_SUFFIXES)}); "
                "--dataset_dir takes such a file, a DICOM series folder or a folder of them"
            )
        return [str(folder)]
    if _is_series_folder(folder):
        return [str(folder)]
    files = [p for p in _visible_files(folder) if _strip_suffix(p, IMAGE_SUFFIXES + VOLUME_SUFFIXES) is not None]
    series = [d for d in sorted(folder.iterdir()) if _is_series_folder(d)]
    if not files and not series:
        raise DataFolderError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}), volumes ({', '.join(VOLUME_SUFFIXES)}) "
            "or DICOM series folders to segment; check --dataset_dir"
        )
    return [str(p) for p in sorted(files + series)]


def check_splits(
    training: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]], allow_overlap: bool = False
) -> None:
    """Refuse validation cases that are also training cases, unless `allow_overlap`: the best model would be chosen
    on data it trained on, and its validation Dice would overstate it. Duplicate entries within a split (a case
    weighted twice, or a copy-paste slip) are reported as a warning naming them."""
    require_bool("allow_overlap", allow_overlap)

    def images(items: Sequence[Mapping[str, Any]]) -> list[str]:
        return [os.path.realpath(str(item["image"])) for item in items]

    train, val = images(training), images(validation)
    for split, paths in (("training", train), ("validation", val)):
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            listed = ", ".join(f"{p} ({paths.count(p)}x)" for p in repeated[:MAX_LISTED])
            more = f" ... and {len(repeated) - MAX_LISTED} more" if len(repeated) > MAX_LISTED else ""
            logger.warning("the %s datalist repeats %d case(s): %s%s", split, len(repeated), listed, more)
    shared = sorted(set(train) & set(val))
    if shared and not allow_overlap:
        more = f" ... and {len(shared) - MAX_LISTED} more" if len(shared) > MAX_LISTED else ""
        raise SAMSPError(
            f"{len(shared)} of {len(set(val))} validation case(s) are also training cases: "
            f"{', '.join(shared[:MAX_LISTED])}{more}. The best model would be chosen on data it trained on; "
            "write a datalist with separate splits (scripts/make_datalist.py), or pass --allow_overlap True"
        )
    if shared:
        logger.warning("--allow_overlap: %d validation case(s) are also training cases", len(shared))
