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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from monai.utils import convert_to_numpy

from ..atomic import atomic_write_text
from .metrics import Array

GT_COLOUR = "lime"
PRED_COLOUR = "red"
OVERLAY_PX = 512


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
    label: Array,
    pred: Array,
    path: str | os.PathLike,
    class_ids: Sequence[int],
    axis: int = 2,
    title: str | None = None,
) -> None:
    """Draw the image in grey (or RGB) with GT contours in green and prediction contours in red.

    ``label``/``pred`` are label maps (H, W) or (H, W, D); ``image`` is the same shape, or channel-first
    with 1 or 3 channels. A volume is cut along ``axis`` at the slice chosen by ``_pick_slice``. Arrays
    are in MONAI's (x, y) index order, so the slice is transposed for display (upright for PIL-read images).
    The PNG is ``OVERLAY_PX`` pixels square.
    """
    lab, prd, img = convert_to_numpy(label), convert_to_numpy(pred), convert_to_numpy(image)
    if lab.shape != prd.shape or lab.ndim not in (2, 3):
        raise ValueError(f"label {lab.shape} and pred {prd.shape} must be the same 2D/3D shape")
    img = _display_image(img, lab.shape)
    if lab.ndim == 3:
        k = _pick_slice(lab, prd, class_ids, axis)
        lab, prd, img = np.take(lab, k, axis), np.take(prd, k, axis), np.take(img, k, axis)
        title = f"{title or ''} slice {k} (axis {axis})".strip()
    img = np.swapaxes(img, 0, 1)
    dpi = 100
    fig = Figure(figsize=(OVERLAY_PX / dpi, OVERLAY_PX / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
    for c in class_ids:
        for mask, colour in ((lab == c, GT_COLOUR), (prd == c, PRED_COLOUR)):
            if mask.any():
                ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    handles = [
        Line2D([], [], color=GT_COLOUR, label="ground truth"),
        Line2D([], [], color=PRED_COLOUR, label="prediction"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    if title:
        ax.text(0.01, 0.01, title, transform=ax.transAxes, color="white", fontsize=8, backgroundcolor="black")
    ax.set_axis_off()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
