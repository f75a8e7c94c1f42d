"""Evaluation layer: metrics, reports and validation handlers (imports data, model and base)."""

from . import (
    benchmark_report,
    handlers,
    metrics,
    reports,
    run_comparison,
)

__all__ = [
    "benchmark_report",
    "handlers",
    "metrics",
    "reports",
    "run_comparison",
]
