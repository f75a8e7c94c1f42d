"""Build SAM from segment_anything's own classes at any input size, and load official checkpoints into it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder, Sam, TwoWayTransformer

from ..errors import SAMSPError
from .batched_decoder import SAM_MASK_TOKENS, BatchedMaskDecoder
from .image_encoder import CheckpointingImageEncoderViT
from .lite_medsam import (
    LITE_MEDSAM,
    LITE_MEDSAM_EMBEDDING_GRID,
    LITE_MEDSAM_IMG_SIZE,
    build_lite_medsam_encoder,
    is_lite_medsam_state,
    lite_medsam_checkpoint,
)

logger = logging.getLogger(__name__)

PATCH_SIZE = 16
CLASS_HEAD_SPREAD = 0.01  # relative step that separates class heads copied from SAM's token 0
CHECKPOINT_HELP = (
    "Download the official weights with `python -m monai.bundle download_large_files --bundle_path bundle` "
    "(listed in bundle/large_files.yml) and pass `--sam_checkpoint <file>`, or try the bundle without weights "
    "with the demo override: --config_file \"['bundle/configs/train.json','bundle/configs/demo.json']\""
)


@dataclass(frozen=True)
class DecoderSpec:
    """Sizes of the prompt encoder and mask decoder; SAM's (and LiteMedSAM's) are the defaults."""

    prompt_dim: int = 256
    mlp_dim: int = 2048
    heads: int = 8


@dataclass(frozen=True)
class SamSpec:
    """Sizes of one SAM ViT variant; the official ones match segment_anything.build_sam."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    decoder: DecoderSpec = DecoderSpec()
    window_size: int = 14


SAM_VARIANTS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    # Small random-weight variants from the same classes: unit tests and the CPU demo.
    "vit_test": SamSpec(32, 2, 2, (1,), DecoderSpec(32, 64, 2), window_size=4),
    "vit_demo": SamSpec(96, 4, 3, (1, 3), DecoderSpec(64, 128, 4), window_size=4),
}
# The pretrained medical SAM that installs with its weights (`lite_medsam.py`): a TinyViT encoder, SAM's decoder.
VARIANTS = (*SAM_VARIANTS, LITE_MEDSAM)


class CheckpointError(SAMSPError, ValueError):
    """A SAM checkpoint that is missing, unreadable or made for another variant."""


def build_sam(variant: str = "vit_b", img_size: int = 1024, num_classes: int = 1) -> Sam:
    """SAM with an image encoder for `img_size` inputs and one mask token per foreground class.

    The decoder gets `num_classes` multimask outputs; token 0 (SAM's single-mask token) is unused. It is a
    `BatchedMaskDecoder`, so a batch of images with their own prompts runs as one call, and the encoder a
    `CheckpointingImageEncoderViT` (checkpointing off until its `checkpointing` flag is set), or for
    `lite_medsam` LiteMedSAM's TinyViT (256 px only: its attention biases are made for that size).
    """
    if variant == LITE_MEDSAM:
        if img_size != LITE_MEDSAM_IMG_SIZE:
            raise SAMSPError(f"sam_variant 'lite_medsam' takes image_size {LITE_MEDSAM_IMG_SIZE} only, got {img_size}")
        decoder, encoder, grid = DecoderSpec(), build_lite_medsam_encoder(), LITE_MEDSAM_EMBEDDING_GRID
    elif variant in SAM_VARIANTS:
        if img_size % PATCH_SIZE:
            raise ValueError(f"img_size must be a multiple of {PATCH_SIZE}, got {img_size}")
        spec, grid = SAM_VARIANTS[variant], img_size // PATCH_SIZE
        decoder = spec.decoder
        encoder = CheckpointingImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
            out_chans=decoder.prompt_dim,
        )
    else:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=decoder.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=BatchedMaskDecoder(
            num_classes=num_classes,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=decoder.prompt_dim, mlp_dim=decoder.mlp_dim, num_heads=decoder.heads
            ),
            transformer_dim=decoder.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=decoder.prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def default_checkpoint(variant: str, ckpt_dir: str | Path) -> str | None:
    """The weights a variant starts from when the config names none: LiteMedSAM's come with its package; the
    official SAM files are expected in `ckpt_dir` under their release names; the test/demo variants have none."""
    if variant == LITE_MEDSAM:
        return str(lite_medsam_checkpoint())
    release = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
    return str(Path(ckpt_dir) / release[variant]) if variant in release else None


class CheckpointMissingError(CheckpointError, FileNotFoundError):
    """The configured weights file does not exist; one line on the command line, like every `SAMSPError`."""


def require_checkpoint(path: str | Path | None) -> Path | None:
    """Fail fast, before any data is loaded, when the SAM weights a run is configured with are not there.

    `None` means no pretrained weights (training from random initialisation, as the demo does).
    """
    if path is None:
        return None
    if not Path(path).is_file():
        raise CheckpointMissingError(f"SAM checkpoint not found: {path}. {CHECKPOINT_HELP}")
    return Path(path)


def load_sam_checkpoint(sam: Sam, path: str | Path, variant: str) -> None:
    """Load an official SAM state dict (e.g. sam_vit_b_01ec64.pth) into `sam`, adapting it to its size.

    Absolute and relative position embeddings are interpolated to the model's input size (as SAMed does);
    SAM's mask tokens are kept and each class after the first gets a copy of its single-mask token
    (`_adapt_class_tokens`). Anything else that differs is an error.
    """
    path = Path(path)
    require_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files raise several different errors
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({err}). {CHECKPOINT_HELP}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain SAM state dict (name -> tensor), got {type(state).__name__}")
    target = sam.state_dict()
    state = _adapt_class_tokens(_adapt_positions(dict(state), target), target)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong_shape = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong_shape:
        problems = [f"{k}: {tuple(state[k].shape)} in file, {tuple(target[k].shape)} expected" for k in wrong_shape]
        problems += [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        raise CheckpointError(
            f"{path} does not match SAM variant {variant!r} ({len(problems)} mismatching keys"
            f"{_guess_variant(state)}): " + "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else "")
        )
    sam.load_state_dict(state)
    logger.info("loaded SAM %s weights from %s", variant, path)


def _adapt_positions(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resize pos_embed (bilinear) and global-attention rel_pos tables (linear) made for another input size."""
    key = "image_encoder.pos_embed"
    if key in state and key in target and state[key].shape != target[key].shape and state[key].ndim == 4:
        grid = target[key].shape[1:3]
        state[key] = F.interpolate(
            state[key].permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
    for k in target:
        if k.endswith(("rel_pos_h", "rel_pos_w")) and k in state and state[k].shape != target[k].shape:
            if state[k].shape[1] == target[k].shape[1]:
                length = target[k].shape[0]
                state[k] = F.interpolate(state[k].T[None], size=length, mode="linear")[0].T
    return state


def _adapt_class_tokens(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep SAM's four mask tokens and start each further class token (with its hypernetwork MLP and IoU row)
    from SAM's single-mask token 0 (`BatchedMaskDecoder.class_tokens`).

    Token 0 is the output SAM trains for unambiguous prompts such as boxes, the prompt SAM-SP gives itself; it
    is class 1's token. The heads of classes 2..N are then moved apart slightly (`_spread_class_heads`).
    """
    tokens = "mask_decoder.mask_tokens.weight"
    if tokens not in state or tokens not in target or state[tokens].shape[0] != SAM_MASK_TOKENS:
        return state
    n_tokens = target[tokens].shape[0]
    rows = list(range(SAM_MASK_TOKENS)) + [0] * (n_tokens - SAM_MASK_TOKENS)
    state[tokens] = state[tokens][rows]
    mlp_prefix = "mask_decoder.output_hypernetworks_mlps."
    mlps = {k[len(mlp_prefix) :]: v for k, v in state.items() if k.startswith(mlp_prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(mlp_prefix)}
    for i, source in enumerate(rows):
        own = {k.split(".", 1)[1]: v for k, v in mlps.items() if k.split(".", 1)[0] == str(source)}
        state.update({f"{mlp_prefix}{i}.{name}": v for name, v in own.items()})
    last = max((k.split(".", 1)[1] for k in mlps if k.startswith("0.") and k.endswith(".weight")), key=_layer_index)
    state = _spread_class_heads(state, [f"{mlp_prefix}{i}.{last}" for i in range(SAM_MASK_TOKENS, n_tokens)])
    iou_out = max(k for k in target if k.startswith("mask_decoder.iou_prediction_head.layers.")).rsplit(".", 1)[0]
    for suffix in (".weight", ".bias"):
        if iou_out + suffix in state:
            state[iou_out + suffix] = state[iou_out + suffix][rows]
    return state


def _layer_index(name: str) -> int:
    """2 of 'layers.2.weight'."""
    return int(name.split(".")[1])


def _spread_class_heads(state: dict[str, torch.Tensor], head_weights: list[str]) -> dict[str, torch.Tensor]:
    """Break the tie between the classes 2..N whose tokens start as copies of SAM's token 0 (class 1's).

    Identical class heads give bit-identical logits, so the argmax tie sends every pixel to the lowest class
    and the others never get a box. Each copied class's last hypernetwork layer (the one that turns its token
    into mask weights, so the change reaches the logits unattenuated) gets its own seeded Gaussian step of
    `CLASS_HEAD_SPREAD` of the weights' RMS: classes differ by about that share of the logits from the first
    forward on, and each stays that close to SAM's box-prompt output. Class 1 is SAM's token 0, unchanged.
    """
    generator = torch.Generator().manual_seed(0)
    for key in head_weights:
        weight = state[key]
        noise = torch.randn(weight.shape, generator=generator).to(weight.dtype)
        state[key] = weight + CLASS_HEAD_SPREAD * weight.pow(2).mean().sqrt() * noise
    return state


def _guess_variant(state: dict[str, torch.Tensor]) -> str:
    """A hint such as ', the file looks like vit_h', from the encoder width and depth."""
    width = state.get("image_encoder.patch_embed.proj.weight")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if is_lite_medsam_state(set(state)):
        return ", the file looks like LiteMedSAM (sam_variant lite_medsam)"
    for name, spec in SAM_VARIANTS.items():
        if width is not None and width.shape[0] == spec.embed_dim and depth == spec.depth:
            return f", the file looks like {name}"
    return ""
