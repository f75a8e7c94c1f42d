"""Learning-rate schedules beyond torch's own: SAMed's linear warmup followed by polynomial decay."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_poly(optimizer: Optimizer, warmup_iterations: int, max_iterations: int, power: float = 0.9) -> LambdaLR:
    """Per-iteration factor of the base lr: `(i + 1) / warmup` while warming up, then `(1 - j / max)^power`.

    This is SAMed's schedule (trainer.py: `--warmup`, 250 iterations, power 0.9), where `j` counts the
    iterations after warmup and `max` is all iterations of the run (max_epochs x iterations per epoch), so the
    rate never quite reaches 0. Step it every iteration (`LrScheduleHandler(epoch_level=False)`).
    """
    if warmup_iterations < 0 or max_iterations <= 0:
        got = f"got {warmup_iterations} and {max_iterations}"
        raise ValueError(f"warmup_iterations must be >= 0 and max_iterations > 0, {got}")

    def factor(i: int) -> float:
        if i < warmup_iterations:
            return (i + 1) / warmup_iterations
        return max(0.0, 1.0 - (i - warmup_iterations) / max_iterations) ** power

    return LambdaLR(optimizer, factor)
