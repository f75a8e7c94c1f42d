"""Inference builds the network the trained model needs, or says which settings to pass.

`model.pt` records its network's construction arguments (`network_args`). Inference configs build the network
from their own keys, so a model trained with overrides (the demo's `demo.json`, `--image_size 512`, ...) served
without them would fail deep in `load_state_dict` with a size mismatch, or, for settings that leave the weights'
shapes alone (`geometry`), run silently on the wrong frame. The check compares the settings that shape weights
or pixels and names each difference as the override that fixes it. Settings inference may choose freely
(`iterations`, `empty_box`, `self_prompt`, `dropout`, ...) are not compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import SAMSPError
from ..training.checkpoints import network_args

# network argument -> the bundle key that sets it
STRUCTURAL_ARGS = {
    "variant": "sam_variant",
    "img_size": "image_size",
    "num_classes": "num_classes",
    "in_channels": "in_channels",
    "encoder_training": "encoder_training",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_targets": "lora_targets",
    "lora_layout": "lora_layout",
    "geometry": "geometry",
}


def mismatched_settings(trained: Mapping[str, Any], configured: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{bundle key: (trained value, configured value)} for the structural settings that differ."""
    return {
        key: (trained[arg], configured.get(arg))
        for arg, key in STRUCTURAL_ARGS.items()
        if arg in trained and trained[arg] != configured.get(arg)
    }


def check_model_matches(model_path: str | Path, network: torch.nn.Module) -> None:
    """Refuse a `model_path` whose recorded network settings differ from `network`'s, naming the overrides."""
    configured = network_args(network)
    # a network that records no arguments (the UNet baseline) has nothing to compare; a missing model file is
    # named by the output guard that runs next
    if configured is None or not Path(model_path).is_file():
        return
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=True, mmap=True)
    trained = checkpoint.get("network_args") if isinstance(checkpoint, Mapping) else None
    if not trained:
        return
    differences = mismatched_settings(trained, configured)
    if differences:
        listed = ", ".join(f"{key}: {was!r} in the model, {now!r} here" for key, (was, now) in differences.items())
        fix = " ".join(f"--{key} {was!r}" for key, (was, _) in differences.items())
        raise SAMSPError(
            f"{model_path} was trained with other network settings ({listed}). Pass the training run's overrides "
            f"(the same override files, e.g. bundle/configs/demo.json for the demo, or {fix})"
        )
