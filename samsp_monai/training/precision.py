"""Mixed precision for MONAI's engines: bf16 autocast where the GPU has it, fp16 with a gradient scaler otherwise.

MONAI's `SupervisedTrainer`/`SupervisedEvaluator` autocast on CUDA only and always create a GradScaler when
`amp` is on. The helpers here turn the bundle's `amp` key into the engines' `amp`/`amp_kwargs`, and
`DropScalerForBF16` removes the scaler when the dtype is bf16 (same exponent range as fp32: nothing to rescale, and
the scaler's overflow check waits on the GPU every step). On CPU `amp` is off: MONAI's engines would only
autocast for CUDA, and CPU bf16 is slower than fp32 on processors without bf16 instructions.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from ..errors import SAMSPError


def check_device(device: torch.device | str) -> None:
    """One line for a device this machine cannot use (`--device cuda` without a GPU, a GPU index beyond the
    count, a misspelt name), before any network is moved there (torch: a traceback from `.to()`)."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SAMSPError(f"--device {device!r} is not a device torch knows ({err}); use cpu or cuda:0") from err
    if chosen.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise SAMSPError(
            f"--device {device}: no usable CUDA GPU here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}); pass --device cpu, or leave out --device to use a GPU when there is one"
        )
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise SAMSPError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")


def amp_enabled(amp: object, device: torch.device | str) -> bool:
    """The bundle key `amp` as the engines' switch: must be a real bool; True only takes effect on CUDA."""
    if not isinstance(amp, bool):
        raise SAMSPError(
            f"config key 'amp' must be True or False (a bool), got {amp!r}; on the command line write --amp True"
        )
    return amp and torch.device(device).type == "cuda"


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA devices that support it (Ampere and newer), else fp16."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def amp_kwargs(device: torch.device | str) -> dict[str, torch.dtype]:
    """`amp_kwargs` for MONAI's engines (arguments of `torch.autocast('cuda')`)."""
    return {"dtype": amp_dtype(device)}


class DropScalerForBF16:
    """Handler: under bf16 autocast, replace the GradScaler MONAI's trainer creates by a disabled one.

    A disabled scaler passes the loss and optimizer step through unchanged, so the trainer's AMP branch still
    autocasts. Under fp16 the trainer keeps its scaler.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.amp and engine.amp_kwargs.get("dtype") == torch.bfloat16:
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)
