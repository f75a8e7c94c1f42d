"""Training layer: checkpoints, settings, run tracking and training-time handlers (imports the layers below)."""

from . import (
    checkpoints,
    curriculum,
    lr_schedules,
    precision,
    prompt_stats,
    runs,
    settings,
    tracking,
    training_guards,
)

__all__ = [
    "checkpoints",
    "curriculum",
    "lr_schedules",
    "precision",
    "prompt_stats",
    "runs",
    "settings",
    "tracking",
    "training_guards",
]
