"""Inference builds the network the trained model needs, feeds it the pixels it was trained on, or says which
settings to pass.

A trained model records its network's construction arguments and the settings that change what the network sees
(modality and intensity window, slice axis, spacing, channels, image size, geometry, class names) in the
model.json beside model.pt (`samsp_monai.model_file`). Inference configs build the network and the preprocessing
from their own keys, so a model trained with overrides (the demo's `demo.json`, `--image_size 512`,
`--modality CT`, ...) served without them would fail deep in `load_state_dict` with a size mismatch or, for
settings that leave the weights' shapes alone (`geometry`, `modality`, `slice_axis`, ...), run silently on other
pixels. The check compares both, before any image is read, and names each difference as the override that fixes
it; it then checks that the weights fit the network, so a file that is no model of this network is one line.
Settings inference may choose freely (`iterations`, `empty_box`, `self_prompt`, `dropout`, ...) are not compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import SAMSPError
from ..model_file import check_fits, load_model, recorded_settings
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
    """{bundle key: (trained value, configured value)} for the structural network arguments that differ."""
    return {
        key: (trained[arg], configured.get(arg))
        for arg, key in STRUCTURAL_ARGS.items()
        if arg in trained and trained[arg] != configured.get(arg)
    }


def mismatched_pixels(trained: Mapping[str, Any], configured: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (trained value, configured value)} for the recorded settings (model.json `settings`) that differ.
    The CT window is compared only for a model trained on CT (others record it as null)."""
    given = recorded_settings(configured)
    if configured.get("ct_window") is not None:
        given["ct_window"] = list(configured["ct_window"])
    return {
        key: (value, given[key])
        for key, value in trained.items()
        if key in given and value != given[key] and not (key == "ct_window" and value is None)
    }


def override(key: str, value: Any) -> str:
    """The command-line override that sets `key` to `value` (lists and dicts quoted for the shell)."""
    return f'--{key} "{value!r}"' if isinstance(value, (list, dict)) else f"--{key} {value!r}"


def describe(differences: Mapping[str, tuple[Any, Any]], here: str) -> tuple[str, str]:
    """('key: trained in the model, now <here>, ...', the overrides that restore the trained values)."""
    listed = ", ".join(f"{key}: {was!r} in the model, {now!r} {here}" for key, (was, now) in differences.items())
    return listed, " ".join(override(key, was) for key, (was, _) in differences.items())


def check_model_matches(
    model_path: str | Path, network: torch.nn.Module, settings: Mapping[str, Any] | None = None
) -> None:
    """Refuse a `model_path` that is no model, or whose recorded network arguments or pixel settings differ from
    `network`'s and `settings`' (the config's `settings`), naming the overrides; then refuse weights that do not
    fit `network`."""
    # a missing model file is named by the output guard that runs next
    if not Path(model_path).is_file():
        return
    model = load_model(model_path)
    differences: dict[str, tuple[Any, Any]] = {}
    if model.settings and settings is not None:
        differences |= mismatched_pixels(model.settings, settings)
    configured = network_args(network)
    if model.network_args and configured is not None:
        differences |= mismatched_settings(model.network_args, configured)
    if differences:
        listed, fix = describe(differences, "here")
        raise SAMSPError(
            f"{model_path} was trained with other settings ({listed}). Pass the training run's overrides "
            f"(the same override files, e.g. bundle/configs/demo.json for the demo, or {fix})"
        )
    check_fits(model, network)
