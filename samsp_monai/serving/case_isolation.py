"""One bad case must not stop a whole inference or evaluation batch: report it, skip it, say so at the end.

`CaseReportingDataset` turns a case whose loading or checks fail into a small failure record (case and one-line
reason) instead of an exception, so the data loader carries on. `CaseSkippingEvaluator` logs and collects
those records without running the network on them, and likewise a case whose segmentation could not be written
(`output_writer.OutputWriteError`, or a DICOM SEG's `atomic.FileWriteError`). `report_cases` ends the run with a
one-line summary of what was written where, and raises when any case failed, so the exit status says so.
Use with `batch_size` 1 (a failure record cannot be collated with image tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from monai.utils import optional_import

from ..atomic import FileWriteError
from ..data.input_checks import case_name, describe_failure, source_of
from ..errors import SAMSPError, find_user_error
from .output_writer import OutputWriteError

Events, _ = optional_import("ignite.engine", name="Events")
logger = logging.getLogger(__name__)

FAILED_KEY = "samsp_failure"
CASE_KEY = "samsp_case"


class FailedCasesError(SAMSPError, RuntimeError):
    """Some cases were skipped; the message lists each with its reason."""


class CaseReportingDataset(Dataset):
    """A MONAI `Dataset` that returns `{CASE_KEY: case, FAILED_KEY: reason}` for a case it cannot prepare."""

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:  # any failure of one case is that case's, reported and skipped
            case = case_name(self.data[index])
            return {CASE_KEY: case, FAILED_KEY: describe_failure(e, case)}


class CaseSkippingEvaluator(SupervisedEvaluator):
    """`SupervisedEvaluator` that skips the failure records of `CaseReportingDataset` and keeps them in
    `failed_cases` (case, reason); the network, postprocessing and metrics see only the good cases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_cases: list[tuple[str, str]] = []
        self.add_event_handler(Events.STARTED, lambda _: self.failed_cases.clear())

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[Hashable, Any]) -> Any:
        if isinstance(batchdata, Mapping) and FAILED_KEY in batchdata:
            for case, reason in zip(batchdata[CASE_KEY], batchdata[FAILED_KEY], strict=True):
                logger.error("skipped a case: %s", reason)
                self.failed_cases.append((case, reason))
            return []
        try:
            return super()._iteration(engine, batchdata)
        except Exception as e:
            error = find_user_error(e)
            if not isinstance(error, (OutputWriteError, FileWriteError)):
                raise
            logger.error("could not write a case: %s", error)
            self.failed_cases.append((source_of(batchdata.get("image")), str(error)))
            return []


def report_cases(evaluator: CaseSkippingEvaluator, output_dir: str | Path, results: str = "") -> None:
    """Print what was written where (`results` names further outputs, e.g. evaluation's reports); raise
    `FailedCasesError` listing the skipped cases when there are any."""
    total = len(evaluator.data_loader.dataset)
    done = total - len(evaluator.failed_cases)
    print(f"segmented {done} of {total} cases into {output_dir}{results}", flush=True)
    if evaluator.failed_cases:
        reasons = "\n".join(f"  {reason}" for _, reason in evaluator.failed_cases)
        raise FailedCasesError(
            f"{len(evaluator.failed_cases)} of {total} cases failed and were skipped "
            f"(the other {done} were written to {output_dir}):\n{reasons}"
        )
