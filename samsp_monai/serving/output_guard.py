"""Segmentations of one model are never silently replaced by those of another.

Inference writes `<case>_seg.<ext>` files into `output_dir` and records in `samsp_outputs.json` which model
made them (path and SHA-256 prefix). A later run with the same model may rewrite them (same model, same
result); a run with a different model, or into a folder holding segmentations of unknown origin, is
refused unless `overwrite` is True, which removes the old segmentations first so that the folder never
mixes two models.

The check runs in `initialize` (`claim_output_dir`), before anything is built; the record is written when the
evaluator starts (`record_when_started`), after the data set is built, so a run that fails before it can
segment anything (a missing datalist, a wrong config stack) leaves no record behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from monai.engines import Workflow
from monai.utils import optional_import

from ..atomic import atomic_write_text
from ..errors import SAMSPError
from ..training.tracking import file_digest

Events, _ = optional_import("ignite.engine", name="Events")

MANIFEST = "samsp_outputs.json"
SEGMENTATION_GLOB = "*_seg.*"


class OutputConflictError(SAMSPError, FileExistsError):
    """The output folder holds segmentations made by another (or an unknown) model."""


def claim_output_dir(output_dir: str | Path, model_path: str | Path, overwrite: bool = False) -> None:
    """Refuse to mix models' segmentations in `output_dir` (see the module docstring); with `overwrite`, remove
    the other model's segmentations. `record_when_started` records this model once the run can start."""
    if not isinstance(overwrite, bool):
        raise SAMSPError(f"--overwrite must be True or False (capitalised), got {overwrite!r}")
    output_dir, model_path = Path(output_dir), Path(model_path)
    if not model_path.is_file():
        raise SAMSPError(f"model not found: {model_path}; train one first or pass --ckpt_path")
    digest = file_digest(model_path)
    manifest = output_dir / MANIFEST
    previous = sorted(output_dir.glob(SEGMENTATION_GLOB)) if output_dir.is_dir() else []
    recorded = json.loads(manifest.read_text()) if manifest.is_file() else None
    same_model = recorded is not None and recorded.get("model_sha256") == digest
    if previous and not same_model:
        if not overwrite:
            made_by = (
                f"model {recorded.get('model')} (sha256 {recorded.get('model_sha256')}, {recorded.get('written')})"
                if recorded
                else f"an unknown model (no {MANIFEST})"
            )
            raise OutputConflictError(
                f"{output_dir} holds {len(previous)} segmentation(s) made by {made_by}, not by {model_path} "
                f"(sha256 {digest}). Choose another --output_dir, or pass --overwrite True to replace them."
            )
        for path in previous:
            path.unlink()


def record_when_started(evaluator: Workflow, output_dir: str | Path, model_path: str | Path) -> None:
    """When `evaluator` starts, record in `output_dir` that `model_path` writes its segmentations there."""
    evaluator.add_event_handler(Events.STARTED, lambda _: record_output_dir(output_dir, model_path))


def record_output_dir(output_dir: str | Path, model_path: str | Path) -> None:
    """Record in `output_dir` that `model_path` writes its segmentations there (after `claim_output_dir`)."""
    output_dir, model_path = Path(output_dir), Path(model_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "model": str(model_path.resolve()),
        "model_sha256": file_digest(model_path),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(output_dir / MANIFEST, json.dumps(record, indent=2) + "\n")
