"""SAM-SP for MONAI: prompt-free segmentation by a SAM that prompts itself."""

from . import (
    case_isolation,
    checkpoints,
    datalist,
    input_checks,
    output_guard,
    precision,
    serving,
    settings,
    transforms,
)
from .boxes import masks_to_boxes
from .demo_data import ensure_demo_dataset
from .errors import SAMSPError, install_short_errors
from .loss import SAMSPLoss
from .network import SAMSP, SAMSPOutput
from .paths import default_bundle_root
from .sam_factory import SAM_VARIANTS, CheckpointError, build_sam, load_sam_checkpoint, require_checkpoint

__all__ = [
    "SAMSP",
    "SAMSPOutput",
    "SAMSPError",
    "SAMSPLoss",
    "SAM_VARIANTS",
    "CheckpointError",
    "build_sam",
    "case_isolation",
    "checkpoints",
    "datalist",
    "default_bundle_root",
    "ensure_demo_dataset",
    "input_checks",
    "load_sam_checkpoint",
    "precision",
    "masks_to_boxes",
    "output_guard",
    "require_checkpoint",
    "serving",
    "settings",
    "transforms",
]

install_short_errors()
