"""Evaluation outputs: per-case CSV, summary JSON and overlay PNGs for a quick visual check."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from monai.utils import convert_to_numpy

from ..atomic import atomic_write_text
from .metrics import Array

CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6")
OVERLAY_PX = 512


def class_colour(class_id: int) -> str:
    """A distinct colour per class (class 1 red, 2 green, 3 blue, ...), the same in every overlay."""
    return CLASS_COLOURS[(class_id - 1) % len(CLASS_COLOURS)]


def write_case_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """One line per (case, class); columns in order of first appearance across the rows."""
    rows = list(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_summary_json(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Strict JSON (``allow_nan=False``): a NaN reaching the summary is a bug, not a value to store."""
    atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _pick_slice(label: np.ndarray, pred: np.ndarray, class_ids: Sequence[int], axis: int) -> int:
    """Slice with the most GT foreground, else the most predicted foreground, else the middle one."""
    other = tuple(a for a in range(label.ndim) if a != axis)
    for mask in (np.isin(label, class_ids), np.isin(pred, class_ids)):
        counts = mask.sum(axis=other)
        if counts.any():
            return int(np.argmax(counts))
    return label.shape[axis] // 2


def _display_image(image: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Grey (spatial) or RGB (3, spatial) image as float in [0, 1], channel last."""
    if image.shape == spatial_shape:
        image = image[None]
    if image.shape[1:] != spatial_shape or image.shape[0] not in (1, 3):
        raise ValueError(f"image {image.shape} does not match label {spatial_shape} (grey or 3-channel RGB)")
    image = np.moveaxis(image.astype(np.float64), 0, -1)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def save_overlay_png(
    image: Array,
    label: Array | None,
    pred: Array,
    path: str | os.PathLike,
    class_ids: Sequence[int],
    axis: int = 2,
    title: str | None = None,
    class_names: Mapping[int, str] | None = None,
) -> None:
    """Draw the image in grey (or RGB), each class's prediction as a translucent fill and its ground truth (when
    given) as a dashed contour, both in the class's own colour (`class_colour`), with a legend per class.

    ``label``/``pred`` are label maps (H, W) or (H, W, D); ``image`` is the same shape, or channel-first
    with 1 or 3 channels. A volume is cut along ``axis`` at the slice chosen by ``_pick_slice``. Arrays
    are in MONAI's (x, y) index order, so the slice is transposed for display (upright for PIL-read images).
    The PNG is ``OVERLAY_PX`` pixels square.
    """
    prd, img = convert_to_numpy(pred), convert_to_numpy(image)
    lab = convert_to_numpy(label) if label is not None else None
    if (lab is not None and lab.shape != prd.shape) or prd.ndim not in (2, 3):
        raise ValueError(
            f"label {None if lab is None else lab.shape} and pred {prd.shape} must be the same 2D/3D shape"
        )
    img = _display_image(img, prd.shape)
    if prd.ndim == 3:
        k = _pick_slice(lab if lab is not None else prd, prd, class_ids, axis)
        prd, img = np.take(prd, k, axis), np.take(img, k, axis)
        lab = np.take(lab, k, axis) if lab is not None else None
        title = f"{title or ''} slice {k} (axis {axis})".strip()
    img = np.swapaxes(img, 0, 1)
    dpi = 100
    fig = Figure(figsize=(OVERLAY_PX / dpi, OVERLAY_PX / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
    handles = []
    for c in class_ids:
        colour = class_colour(c)
        fill = np.zeros((*prd.T.shape, 4))
        fill[prd.T == c] = (*to_rgb(colour), 0.4)
        ax.imshow(fill, interpolation="nearest")
        if lab is not None and (lab == c).any():
            ax.contour((lab == c).T.astype(float), levels=[0.5], colors=colour, linewidths=1.5, linestyles="dashed")
        handles.append(Patch(facecolor=colour, alpha=0.6, label=(class_names or {}).get(c, f"class {c}")))
    if lab is not None:
        handles.append(Line2D([], [], color="white", linestyle="dashed", label="ground truth"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7, title="fill: prediction")
    if title:
        ax.text(0.01, 0.01, title, transform=ax.transAxes, color="white", fontsize=8, backgroundcolor="black")
    ax.set_axis_off()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
