"""Serving layer: bundle configs for serving, export and inference-time guards (imports the layers below)."""

from . import (
    case_isolation,
    consistency,
    export,
    model_match,
    output_guard,
    serving_bundle,
)

__all__ = [
    "case_isolation",
    "consistency",
    "export",
    "model_match",
    "output_guard",
    "serving_bundle",
]
