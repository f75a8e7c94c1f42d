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
from .batched_decoder import BatchedMaskDecoder
from .image_encoder import CheckpointingImageEncoderViT

logger = logging.getLogger(__name__)

PATCH_SIZE = 16
CLASS_HEAD_SPREAD = 0.01  # relative step that separates class heads copied from SAM's token 0
CHECKPOINT_HELP = (
    "Download the official weights with `python -m monai.bundle download_large_files --bundle_path bundle` "
    "(listed in bundle/large_files.yml) and pass `--sam_checkpoint <file>`, or try the bundle without weights "
    "with the demo override: --config_file \"['bundle/configs/train.json','bundle/configs/demo.json']\""
)


@dataclass(frozen=True)
class SamSpec:
    """Sizes of one SAM variant; the official ones match segment_anything.build_sam."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    window_size: int = 14


SAM_VARIANTS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    # Small random-weight variants from the same classes: unit tests and the CPU demo.
    "vit_test": SamSpec(32, 2, 2, (1,), prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, window_size=4),
    "vit_demo": SamSpec(96, 4, 3, (1, 3), prompt_dim=64, decoder_mlp_dim=128, decoder_heads=4, window_size=4),
}


class CheckpointError(SAMSPError, ValueError):
    """A SAM checkpoint that is missing, unreadable or made for another variant."""


def build_sam(variant: str = "vit_b", img_size: int = 1024, num_classes: int = 1) -> Sam:
    """SAM with an image encoder for `img_size` inputs and one mask token per foreground class.

    The decoder gets `num_classes` multimask outputs; token 0 (SAM's single-mask token) is unused. It is a
    `BatchedMaskDecoder`, so a batch of images with their own prompts runs as one call, and the encoder a
    `CheckpointingImageEncoderViT` (checkpointing off until its `checkpointing` flag is set).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {sorted(SAM_VARIANTS)}")
    if img_size % PATCH_SIZE:
        raise ValueError(f"img_size must be a multiple of {PATCH_SIZE}, got {img_size}")
    spec = SAM_VARIANTS[variant]
    grid = img_size // PATCH_SIZE
    return Sam(
        image_encoder=CheckpointingImageEncoderViT(
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
            out_chans=spec.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=BatchedMaskDecoder(
            num_multimask_outputs=num_classes,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=spec.prompt_dim, mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_heads
            ),
            transformer_dim=spec.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


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
    every class token starts from SAM's single-mask token. Anything else that differs is an error.
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
    """Start every mask token (and its hypernetwork MLP and IoU row) from SAM's single-mask token 0.

    Token 0 is the output SAM trains for unambiguous prompts such as boxes, the prompt SAM-SP gives itself.
    With two or more classes their heads are then moved apart slightly (`_spread_class_heads`).
    """
    tokens = "mask_decoder.mask_tokens.weight"
    if tokens not in state or tokens not in target:
        return state
    n_tokens = target[tokens].shape[0]
    state[tokens] = state[tokens][[0] * n_tokens]
    mlp_prefix = "mask_decoder.output_hypernetworks_mlps."
    token0 = {k[len(mlp_prefix) + 2 :]: v for k, v in state.items() if k.startswith(mlp_prefix + "0.")}
    state = {k: v for k, v in state.items() if not k.startswith(mlp_prefix)}
    state.update({f"{mlp_prefix}{i}.{name}": v for i in range(n_tokens) for name, v in token0.items()})
    last = max((name for name in token0 if name.endswith(".weight")), key=lambda name: int(name.split(".")[1]))
    state = _spread_class_heads(state, [f"{mlp_prefix}{i}.{last}" for i in range(1, n_tokens)])
    iou_out = max(k for k in target if k.startswith("mask_decoder.iou_prediction_head.layers.")).rsplit(".", 1)[0]
    for suffix in (".weight", ".bias"):
        if iou_out + suffix in state:
            state[iou_out + suffix] = state[iou_out + suffix][[0] * n_tokens]
    return state


def _spread_class_heads(state: dict[str, torch.Tensor], head_weights: list[str]) -> dict[str, torch.Tensor]:
    """Break the tie between N >= 2 classes that all start as copies of SAM's token 0.

    Identical class heads give bit-identical logits for every class, so the argmax tie sends every pixel to
    class 1 and class 2 never gets a box. Each class's last hypernetwork layer (the one that turns its token
    into mask weights, so the change reaches the logits unattenuated) gets its own seeded Gaussian step of
    `CLASS_HEAD_SPREAD` of the weights' RMS: classes differ by about that share of the logits from the first
    forward on, and each stays that close to SAM's box-prompt output. One class has no tie and stays exact.
    """
    if len(head_weights) < 2:
        return state
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
    for name, spec in SAM_VARIANTS.items():
        if width is not None and width.shape[0] == spec.embed_dim and depth == spec.depth:
            return f", the file looks like {name}"
    return ""
