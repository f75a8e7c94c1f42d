"""Ignite handler that scores every evaluated case and writes the evaluation report."""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monai.utils import IgniteInfo, convert_to_numpy, min_version, optional_import
from monai.utils import ImageMetaKey as Key

from .metrics import case_metrics, spacing_from_affine, summarise
from .reports import save_overlay_png, write_case_csv, write_summary_json

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

logger = logging.getLogger(__name__)

STATE_METRIC_KEYS = {"dice": "eval_dice", "iou": "eval_iou", "hd95_mm": "eval_hd95_mm"}


def case_name(pred: MetaTensor, index: int) -> str:
    """File name without directory and image extensions (``.nii.gz`` included), else ``case_<index>``."""
    source = pred.meta.get(Key.FILENAME_OR_OBJ)
    if not isinstance(source, str) or not source:
        return f"case_{index:04d}"
    return case_stem(Path(source))


def dice_title(name: str, rows: Sequence[Mapping[str, Any]], class_names: Mapping[int, str]) -> str:
    """`case  Dice anterior 0.912, posterior 0.884` from `case_metrics` rows (both-empty classes left out)."""
    scores = [f"{class_names[r['class_id']]} {r['dice']:.3f}" for r in rows if r["status"] != "both_empty"]
    return f"{name}  Dice {', '.join(scores)}" if scores else name


class InferenceOverlays:
    """Inference handler: overlays of the first `num_overlays` cases in `<output_dir>/overlays/`, and, where
    `label_dir` holds a label of the same file name as the input (MSD `labelsTr/`, Kvasir `masks/` by stem), the
    ground truth drawn in and the Dice per class printed and written into the figure.

    Expects the decollated output of `inference.json`: `pred` a (1, *spatial) label map and `image` the input, both
    in the input's own geometry (after `Invertd`). A label is read as a plain array; a 2D mask with values above
    `num_classes` (0/255 JPEG/PNG masks) is thresholded at 127, as the data conventions say.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Mapping[int, str],
        num_overlays: int = 4,
        label_dir: str | Path | None = None,
    ) -> None:
        self.output_dir, self.num_overlays = Path(output_dir), num_overlays
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.label_dir = Path(label_dir) if label_dir else None
        self.written = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine) -> None:
        self.written = 0

    def _label_for(self, source: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        matches = sorted(self.label_dir.glob(glob.escape(case_stem(source)) + ".*")) if self.label_dir else []
        if not matches:
            return None
        label = np.squeeze(np.asarray(LoadImage(image_only=True)(str(matches[0]))))
        if label.ndim == 3 and len(shape) == 2:  # an RGB mask
            label = label[..., 0]
        if label.max() > max(self.class_names):
            label = (label > 127).astype(np.uint8)
        if label.shape != shape:
            raise ValueError(f"label {matches[0]}: shape {label.shape} differs from the prediction's {shape}")
        return label.astype(np.int64)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            if self.written >= self.num_overlays or not isinstance(item, Mapping) or "pred" not in item:
                continue
            pred = item["pred"]
            source = Path(str(pred.meta.get(Key.FILENAME_OR_OBJ, f"case_{self.written:04d}")))
            pred_np = convert_to_numpy(pred[0])
            label = self._label_for(source, pred_np.shape)
            title = case_stem(source)
            if label is not None:
                spacing = spacing_from_affine(pred.affine)[: pred_np.ndim]
                title = dice_title(title, case_metrics(pred_np, label, spacing, self.class_names), self.class_names)
            path = self.output_dir / "overlays" / f"{case_stem(source)}.png"
            image = convert_to_numpy(item["image"])
            save_overlay_png(
                image, label, pred_np, path, list(self.class_names), title=title, class_names=self.class_names
            )
            self.written += 1
            print(f"overlay {path}" + (f": {title.split('  ', 1)[1]}" if "  " in title else ""), flush=True)


def case_stem(source: Path) -> str:
    """File name without image extensions (`.nii.gz` included): `case_000.nii.gz` -> `case_000`."""
    name = source.name
    return Path(name[:-3] if name.endswith(".gz") else name).stem


class CaseMetricsWriter:
    """Score each case of a MONAI evaluator with ``case_metrics`` and write CSV, JSON and overlays.

    Expects ``engine.state.output`` to be the decollated list of dicts whose ``pred``/``label`` are
    label maps of shape (1, *spatial) in the original image geometry (MetaTensors: the spacing in mm
    comes from ``pred.affine``, the case name from its ``filename_or_obj``). Results are reset at each
    epoch start, so an evaluator run repeatedly by a ``ValidationHandler`` reports only the latest run.
    Everything is written at ``EPOCH_COMPLETED`` (not ``COMPLETED``) and the overall means go into
    ``engine.state.metrics`` as ``eval_dice``/``eval_iou``/``eval_hd95_mm``, so handlers attached after
    this one (MLflow, stats, checkpoint) see them at the same event. Single-process only: cases are
    not gathered across ranks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Mapping[int, str],
        num_overlays: int = 4,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.num_overlays = num_overlays
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.rows: list[dict[str, Any]] = []
        self.overlays: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_cases = 0

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        if not engine.has_event_handler(self.collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        if not engine.has_event_handler(self.write, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows, self.overlays, self._n_cases = [], [], 0

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            self._add_case(item)

    def _add_case(self, item: Mapping[str, Any]) -> None:
        pred, label = item[self.pred_key], item[self.label_key]
        if not isinstance(pred, MetaTensor) or pred.shape[0] != 1 or pred.shape != label.shape:
            raise ValueError(
                f"'{self.pred_key}' must be a (1, *spatial) MetaTensor label map with the shape of "
                f"'{self.label_key}'; got {type(pred).__name__} {tuple(pred.shape)} and {tuple(label.shape)}"
            )
        name = case_name(pred, self._n_cases)
        self._n_cases += 1
        pred_np, label_np = convert_to_numpy(pred[0]), convert_to_numpy(label[0])
        spacing = spacing_from_affine(pred.affine)[: pred_np.ndim]
        for row in case_metrics(pred_np, label_np, spacing, self.class_names):
            self.rows.append({"case": name, "class_name": self.class_names[row["class_id"]], **row})
        if len(self.overlays) < self.num_overlays:
            title = dice_title(name, self.rows[-len(self.class_names) :], self.class_names)
            self.overlays.append((title, name, convert_to_numpy(item[self.image_key]), label_np, pred_np))

    def write(self, engine: Engine) -> None:
        summary = summarise(self.rows)
        write_case_csv(self.rows, self.output_dir / "metrics_per_case.csv")
        write_summary_json(summary, self.output_dir / "metrics_summary.json")
        for title, name, image, label, pred in self.overlays:
            path = self.output_dir / "overlays" / f"{name}.png"
            save_overlay_png(
                image, label, pred, path, list(self.class_names), title=title, class_names=self.class_names
            )
        for metric, key in STATE_METRIC_KEYS.items():
            if summary["overall"][metric] is not None:
                engine.state.metrics[key] = summary["overall"][metric]
        logger.info("evaluation over %d cases: %s (%s)", self._n_cases, summary["overall"], summary["status_counts"])
