"""SAM-SP for MONAI: prompt-free segmentation by a SAM that prompts itself.

Modules are grouped by layer, and imports only run downward: the base modules (errors, atomic, paths), then
model, data, evaluation, training, serving.
"""

from . import data, evaluation, model, serving, training
from .console import bundle_runner_is_main, quiet_third_party
from .data.demo_data import ensure_demo_dataset
from .errors import SAMSPError, install_short_errors
from .model.boxes import masks_to_boxes
from .model.loss import SAMSPLoss
from .model.network import SAMSP, SAMSPOutput
from .model.sam_factory import SAM_VARIANTS, CheckpointError, build_sam, load_sam_checkpoint, require_checkpoint
from .paths import default_bundle_root

__all__ = [
    "SAMSP",
    "SAMSPOutput",
    "SAMSPError",
    "SAMSPLoss",
    "SAM_VARIANTS",
    "CheckpointError",
    "build_sam",
    "data",
    "default_bundle_root",
    "ensure_demo_dataset",
    "evaluation",
    "load_sam_checkpoint",
    "masks_to_boxes",
    "model",
    "require_checkpoint",
    "serving",
    "training",
]

install_short_errors()
if bundle_runner_is_main():
    quiet_third_party()
