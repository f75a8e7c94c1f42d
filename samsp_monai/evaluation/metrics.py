"""Per-case, per-class Dice, IoU and HD95 (mm) with explicit rules for empty masks.

MONAI's ``HausdorffDistanceMetric`` gives NaN (or inf) when exactly one of prediction and ground truth is
empty, and its mean skips those values, so a structure the model misses entirely disappears from the
average. Here every (case, class) pair gets a ``status`` and a finite value:

- ``both_present``: Dice, IoU and MONAI's HD95 (max of the two directed 95th-percentile surface
  distances, in mm via ``spacing``).
- ``missed`` (GT non-empty, prediction empty) and ``false_positive`` (prediction non-empty, GT empty):
  Dice 0, IoU 0, HD95 = ``hd95_penalty_mm(shape, spacing)``, the diagonal of the image extent. No two
  voxel centres in the image are that far apart, so the penalty is finite and worse than any real HD95.
- ``both_empty``: Dice 1, IoU 1, HD95 0 (nothing to find, nothing found). These rows say nothing about
  segmentation quality, so ``summarise`` counts them and leaves them out of the means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from monai.utils import convert_to_numpy

STATUSES = ("both_present", "missed", "false_positive", "both_empty")
METRICS = ("dice", "iou", "hd95_mm")

Array = np.ndarray | torch.Tensor


def hd95_penalty_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """HD95 given when exactly one side is empty: ``sqrt(sum((shape * spacing) ** 2))``, the image diagonal."""
    return float(np.sqrt(np.sum((np.asarray(shape, float) * np.asarray(spacing, float)) ** 2)))


def spacing_from_affine(affine: Array) -> tuple[float, ...]:
    """Voxel size per axis: the column norms of the affine's linear part (robust to rotation and flips)."""
    a = convert_to_numpy(affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"expected a square (N+1)x(N+1) affine, got shape {a.shape}")
    n = a.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(a[:n, :n], axis=0))


def _status(pred_any: bool, gt_any: bool) -> str:
    if pred_any and gt_any:
        return "both_present"
    if gt_any:
        return "missed"
    return "false_positive" if pred_any else "both_empty"


def case_metrics(pred: Array, label: Array, spacing: Sequence[float], class_ids: Iterable[int]) -> list[dict[str, Any]]:
    """One row per class id: ``class_id``, ``status``, ``dice``, ``iou``, ``hd95_mm``.

    ``pred`` and ``label`` are integer label maps of the same spatial shape, (H, W) or (H, W, D), in the
    same geometry; ``spacing`` gives the voxel size in mm along each of those axes.
    """
    p = convert_to_numpy(pred)
    g = convert_to_numpy(label)
    if p.shape != g.shape:
        raise ValueError(f"pred and label shapes differ: {p.shape} vs {g.shape}")
    if p.ndim not in (2, 3) or len(spacing) != p.ndim:
        raise ValueError(f"need a 2D/3D label map with one spacing per axis, got {p.shape} and {spacing}")
    spacing = [float(s) for s in spacing]
    penalty = hd95_penalty_mm(p.shape, spacing)
    rows = []
    for c in class_ids:
        pc, gc = p == c, g == c
        status = _status(bool(pc.any()), bool(gc.any()))
        if status == "both_present":
            inter, n_p, n_g = float(np.sum(pc & gc)), float(pc.sum()), float(gc.sum())
            dice, iou = 2 * inter / (n_p + n_g), inter / (n_p + n_g - inter)
            hd = compute_hausdorff_distance(
                pc[None, None], gc[None, None], include_background=True, percentile=95, spacing=spacing
            )
            hd95 = float(hd.item())
        elif status == "both_empty":
            dice, iou, hd95 = 1.0, 1.0, 0.0
        else:
            dice, iou, hd95 = 0.0, 0.0, penalty
        rows.append({"class_id": int(c), "status": status, "dice": dice, "iou": iou, "hd95_mm": hd95})
    return rows


def _stats(values: list[float]) -> dict[str, float | None]:
    """Mean/median/std (population); None, not NaN, when empty so the JSON stays strict."""
    if not values:
        return {"mean": None, "median": None, "std": None}
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std())}


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-class statistics over rows whose status is not ``both_empty``, status counts, overall means.

    ``overall`` averages the per-class means (each class weighs the same, whatever its case count);
    classes with no evaluable case are left out of it.
    """
    by_class: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_class.setdefault(int(r["class_id"]), []).append(r)
    classes: dict[str, dict[str, Any]] = {}
    for cid in sorted(by_class):
        class_rows = by_class[cid]
        scored = [r for r in class_rows if r["status"] != "both_empty"]
        entry: dict[str, Any] = {"class_name": class_rows[0].get("class_name", str(cid))}
        entry["n_cases"] = len(class_rows)
        entry["n_evaluated"] = len(scored)
        entry["status_counts"] = {s: sum(r["status"] == s for r in class_rows) for s in STATUSES}
        entry.update({m: _stats([float(r[m]) for r in scored]) for m in METRICS})
        classes[str(cid)] = entry
    overall: dict[str, float | None] = {}
    for m in METRICS:
        means = [e[m]["mean"] for e in classes.values() if e[m]["mean"] is not None]
        overall[m] = float(np.mean(means)) if means else None
    totals = {s: sum(e["status_counts"][s] for e in classes.values()) for s in STATUSES}
    return {
        "classes": classes,
        "overall": overall,
        "status_counts": totals,
        "conventions": {
            "hd95": "max of the two directed 95th-percentile surface distances (MONAI), in mm",
            "one_side_empty": "dice 0, iou 0, hd95_mm = image diagonal sqrt(sum((shape*spacing)^2))",
            "both_empty": "counted in status_counts, excluded from means/medians/stds",
        },
    }
