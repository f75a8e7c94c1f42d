"""How the image encoder is adapted: LoRA on a frozen encoder, full fine-tuning, or frozen.

Two LoRA layouts on SAM's fused attention projection `attn.qkv` (one Linear computing q, k and v):
- `qkv`: peft's adapter on the whole fused Linear, so one low-rank update covers q, k and v together;
- `q_v`: SAMed's layout, separate low-rank adapters on the q and v thirds of the output, k left unadapted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from ..errors import SAMSPError

logger = logging.getLogger(__name__)

EncoderTraining = Literal["lora", "full", "frozen"]
LoraLayout = Literal["qkv", "q_v"]
PEFT_ADAPTER = "default"


class QVLoRA(nn.Module):
    """SAMed's LoRA on a fused qkv Linear: `q += s * B_q A_q x`, `v += s * B_v A_v x`, k unchanged.

    A starts Kaiming-uniform and B at zero (as SAMed and peft), so the adapted layer starts equal to the base.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        dim = base_layer.in_features
        if base_layer.out_features != 3 * dim:
            raise SAMSPError(
                f"lora_layout 'q_v' needs a fused qkv Linear (out = 3 x in), got {base_layer.in_features} -> "
                f"{base_layer.out_features}; use lora_layout 'qkv' for other targets"
            )
        self.base_layer, self.scaling = base_layer.requires_grad_(False), scaling
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_q_A, self.lora_q_B = nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False)
        self.lora_v_A, self.lora_v_B = nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False)
        for a, b in ((self.lora_q_A, self.lora_q_B), (self.lora_v_A, self.lora_v_B)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def forward(self, x: Tensor) -> Tensor:
        d = self.lora_dropout(x)
        q = self.lora_q_B(self.lora_q_A(d)) * self.scaling
        v = self.lora_v_B(self.lora_v_A(d)) * self.scaling
        return self.base_layer(x) + torch.cat([q, torch.zeros_like(q), v], dim=-1)

    def delta_weight(self) -> Tensor:
        """The update of the base weight (3 dim, dim) that this adapter adds: the merge export's input."""
        q = self.lora_q_B.weight @ self.lora_q_A.weight * self.scaling
        v = self.lora_v_B.weight @ self.lora_v_A.weight * self.scaling
        return torch.cat([q, torch.zeros_like(q), v], dim=0)


def resolve_targets(encoder: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full paths of the Linear layers whose module path ends with one of `targets` at a dot boundary.

    `qkv` matches every `blocks.N.attn.qkv`, `attn.proj` every attention output projection; `proj` alone
    also matches only the attention projections, because the patch embedding's `proj` is a Conv2d and LoRA
    is applied to Linear layers only. A target that matches no Linear layer is an error naming the choices.
    """
    linears = [name for name, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    paths: list[str] = []
    for target in targets:
        hits = [name for name in linears if name == target or name.endswith("." + target)]
        if not hits:
            choices = sorted({".".join(name.split(".")[-2:]) for name in linears})
            raise SAMSPError(
                f"lora_targets: {target!r} matches no Linear layer of the image encoder; "
                f"use module-path suffixes such as {', '.join(choices)}"
            )
        paths += [name for name in hits if name not in paths]
    return paths


def adapt_encoder(
    encoder: nn.Module,
    mode: EncoderTraining = "lora",
    rank: int = 4,
    alpha: float | None = None,
    targets: Sequence[str] = ("qkv",),
    dropout: float = 0.0,
    layout: LoraLayout = "qkv",
) -> nn.Module:
    """Freeze `encoder` and add LoRA (`lora`), train all of it (`full`, for random weights), or freeze it.

    `alpha` defaults to `rank`, i.e. a LoRA scale of 1 as in SAMed. `layout` picks peft's fused adapter
    (`qkv`) or SAMed's separate q and v adapters (`q_v`, fused qkv targets only).
    """
    if mode == "full":
        return encoder.requires_grad_(True)
    if mode == "frozen":
        return encoder.requires_grad_(False)
    if mode != "lora":
        raise ValueError(f"encoder_training must be 'lora', 'full' or 'frozen', got {mode!r}")
    if layout not in ("qkv", "q_v"):
        raise SAMSPError(f"lora_layout must be 'qkv' (peft, fused) or 'q_v' (SAMed), got {layout!r}")
    paths = resolve_targets(encoder, targets)
    alpha = rank if alpha is None else alpha
    if layout == "qkv":
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=paths, lora_dropout=dropout)
        return inject_adapter_in_model(config, encoder)  # marks only the adapter weights trainable
    encoder.requires_grad_(False)
    for path in paths:
        parent, _, name = path.rpartition(".")
        owner = encoder.get_submodule(parent)
        setattr(owner, name, QVLoRA(getattr(owner, name), rank, alpha / rank, dropout))
    return encoder


def lora_delta(module: QVLoRA | LoraLayer) -> Tensor:
    """The weight update a LoRA-adapted layer adds to its base weight."""
    return module.delta_weight() if isinstance(module, QVLoRA) else module.get_delta_weight(PEFT_ADAPTER)


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`model`'s state dict with every LoRA update folded into its base weight, in the unadapted key layout.

    `x.base_layer.weight` + delta becomes `x.weight` and the adapter keys disappear. The model itself is
    left unchanged, so merging again gives the same weights and an update can never be applied twice.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for path, module in model.named_modules():
        if not isinstance(module, (QVLoRA, LoraLayer)):
            continue
        delta = lora_delta(module)
        base = module.base_layer
        state = {k: v for k, v in state.items() if not k.startswith(path + ".")}
        state[f"{path}.weight"] = (base.weight + delta.to(base.weight.dtype)).detach().clone()
        if base.bias is not None:
            state[f"{path}.bias"] = base.bias.detach().clone()
    return state


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, (QVLoRA, LoraLayer)) for m in model.modules())


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def log_trainable(module: nn.Module, name: str) -> None:
    trainable, total = count_parameters(module)
    logger.info("%s: %d of %d parameters trainable (%.2f%%)", name, trainable, total, 100 * trainable / total)
