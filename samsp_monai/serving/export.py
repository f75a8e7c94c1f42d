"""Export a trained SAM-SP with its LoRA folded into the base weights, for serving without peft.

The merged file holds a plain segment_anything state dict (the keys of `Sam.state_dict()`, loadable into
`build_sam(variant, img_size, num_classes)`) and the SAM-SP settings that rebuild the network around it.
SAM-SP adds no parameters beyond SAM: its head is the decoder's N + 3 mask tokens (SAM's four and one more per class
after the first), their hypernetwork MLPs and IoU rows, which live in that state dict; self-prompting, K and the
empty-box rule are settings.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write
from ..errors import SAMSPError
from ..model.lora import has_lora, merged_state_dict
from ..model.network import SAMSP
from ..model_file import TrainedModel, check_fits
from ..training.checkpoints import atomic_save
from .model_match import describe, mismatched_settings

logger = logging.getLogger(__name__)

MERGED_FORMAT = "samsp-merged-v1"
ADAPTER_ARGS = ("encoder_training", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "lora_layout")


def unadapted_args(network_args: Mapping[str, Any]) -> dict[str, Any]:
    """SAMSP arguments for the same network without adapters and without loading SAM's own checkpoint."""
    args = {k: v for k, v in network_args.items() if k not in ADAPTER_ARGS and k != "checkpoint"}
    return args | {"encoder_training": "frozen", "checkpoint": None}


def merged_export(net: SAMSP, network_args: Mapping[str, Any]) -> dict[str, Any]:
    """The merged file's content for `net` (built with `network_args`); `net` itself is left unchanged."""
    return {"format": MERGED_FORMAT, "sam": merged_state_dict(net.sam), "network_args": unadapted_args(network_args)}


def load_merged_state(net: SAMSP, sam_state: Mapping[str, Tensor], source: str = "merged weights") -> SAMSP:
    """Load merged SAM weights into an unadapted `net`; an adapted one is refused, so no update applies twice."""
    if has_lora(net):
        raise SAMSPError(
            f"{source}: the LoRA update is already folded into these weights; load them into a network built "
            "with encoder_training 'frozen' or 'full' (samsp_monai.serving.export.load_merged does), not a LoRA one"
        )
    net.sam.load_state_dict(sam_state)
    return net


def load_merged(path: str | Path) -> SAMSP:
    """The unadapted SAM-SP network (eval mode) stored in a merged export file."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != MERGED_FORMAT:
        raise SAMSPError(
            f"{path}: not a merged SAM-SP export (no format {MERGED_FORMAT!r}); write one with scripts/export_merged.py"
        )
    return load_merged_state(SAMSP(**content["network_args"]), content["sam"], str(path)).eval()


def recorded_network_args(
    model: TrainedModel, configured: Mapping[str, Any], overridden: Collection[str] = ()
) -> dict[str, Any]:
    """The network arguments to rebuild `model` with: its record's (model.json, or an old nested file's), as
    inference uses them; `configured` (the config's `network_def`) only for a plain model.pt with no record.
    A command-line override (`overridden`: bundle keys) that contradicts the record is refused, not ignored."""
    if not model.network_args:
        return dict(configured)
    contradicted = {k: v for k, v in mismatched_settings(model.network_args, configured).items() if k in overridden}
    if contradicted:
        listed, fix = describe(contradicted, "given")
        raise SAMSPError(
            f"{model.path} records other network settings than the overrides given ({listed}); drop those "
            f"overrides (the model's record is used) or pass {fix}"
        )
    return dict(model.network_args)


def export_merged(model: TrainedModel, network_args: Mapping[str, Any], out_path: str | Path) -> Path:
    """Fold the LoRA of a trained model (built with `network_args`) into its weights and write the merged file."""
    net = SAMSP(**(dict(network_args) | {"checkpoint": None}))
    check_fits(model, net)
    net.load_state_dict(model.state_dict)
    atomic_save(merged_export(net, network_args), out_path)
    logger.info("wrote merged SAM-SP weights of %s to %s", model.path, out_path)
    return Path(out_path)


def export_program(net: SAMSP, example: Tensor) -> torch.export.ExportedProgram:
    """`torch.export` of an unadapted SAM-SP (e.g. `load_merged(...)`) in eval mode, with a dynamic batch.

    With `geometry="stretch"` height and width are dynamic too; with `geometry="sam"` the longest-side
    resize depends on the input size, so the program is specialised to `example`'s height and width.
    """
    if has_lora(net):
        raise SAMSPError("export the merged network (samsp_monai.serving.export.load_merged), not the LoRA-adapted one")
    net = net.eval()
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if net.geometry == "stretch":
        dims |= {2: torch.export.Dim("height", min=16, max=8192), 3: torch.export.Dim("width", min=16, max=8192)}
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes={"x": dims})


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write a `.pt2` program atomically; `torch.export.load(path).module()` runs it without samsp_monai."""
    atomic_write(path, lambda f: torch.export.save(program, f))
    logger.info("wrote the torch.export program to %s", path)
    return Path(path)
