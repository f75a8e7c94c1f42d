"""Ignite handler that scores every evaluated case and writes the evaluation report."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.data import MetaTensor
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
    name = Path(source).name
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
        self.overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
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
            self.overlays.append((name, convert_to_numpy(item[self.image_key]), label_np, pred_np))

    def write(self, engine: Engine) -> None:
        summary = summarise(self.rows)
        write_case_csv(self.rows, self.output_dir / "metrics_per_case.csv")
        write_summary_json(summary, self.output_dir / "metrics_summary.json")
        for name, image, label, pred in self.overlays:
            save_overlay_png(
                image, label, pred, self.output_dir / "overlays" / f"{name}.png", list(self.class_names), title=name
            )
        for metric, key in STATE_METRIC_KEYS.items():
            if summary["overall"][metric] is not None:
                engine.state.metrics[key] = summary["overall"][metric]
        logger.info("evaluation over %d cases: %s (%s)", self._n_cases, summary["overall"], summary["status_counts"])
