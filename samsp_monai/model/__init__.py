"""Model layer: SAM construction, LoRA, the SAM-SP network and its loss (imports only the base modules)."""

from . import (
    batched_decoder,
    boxes,
    geometry,
    image_encoder,
    lora,
    loss,
    network,
    sam_factory,
    unet,
)

__all__ = [
    "batched_decoder",
    "boxes",
    "geometry",
    "image_encoder",
    "lora",
    "loss",
    "network",
    "sam_factory",
    "unet",
]
