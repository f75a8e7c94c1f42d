"""How the image encoder is adapted: LoRA on a frozen encoder (peft), full fine-tuning, or frozen."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

logger = logging.getLogger(__name__)

EncoderTraining = Literal["lora", "full", "frozen"]


def adapt_encoder(
    encoder: nn.Module,
    mode: EncoderTraining = "lora",
    rank: int = 4,
    alpha: float | None = None,
    targets: Sequence[str] = ("qkv",),
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze `encoder` and add LoRA (`lora`), train all of it (`full`, for random weights), or freeze it.

    peft's `target_modules=["qkv"]` adapts SAM's fused q, k, v projection together (SAMed adapts only q and v).
    `alpha` defaults to `rank`, i.e. a LoRA scale of 1 as in SAMed.
    """
    if mode == "full":
        return encoder.requires_grad_(True)
    if mode == "frozen":
        return encoder.requires_grad_(False)
    if mode != "lora":
        raise ValueError(f"encoder_training must be 'lora', 'full' or 'frozen', got {mode!r}")
    config = LoraConfig(
        r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(targets), lora_dropout=dropout
    )
    return inject_adapter_in_model(config, encoder)  # marks only the adapter weights trainable


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def log_trainable(module: nn.Module, name: str) -> None:
    trainable, total = count_parameters(module)
    logger.info("%s: %d of %d parameters trainable (%.2f%%)", name, trainable, total, 100 * trainable / total)
