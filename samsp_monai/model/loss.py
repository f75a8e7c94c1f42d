"""SAM-SP loss: supervise the self-prompted pass, distil it into the prompt-free pass."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from .network import SAMSPOutput

KLDirection = Literal["forward", "reverse"]


class SAMSPLoss(nn.Module):
    """`L = dice_weight * Dice(y1, y) + ce_weight * CE(y1, y) + alpha * KL` on (B, N + 1, H, W) class logits.

    Defaults and why:
    - `alpha=1.0`: the distillation term is a per-pixel mean, on the same scale as Dice; 1 weighs both equally.
    - `kl="forward"`: KL(teacher || student), the usual distillation form; it is mode-covering, so the
      prompt-free pass is pushed hardest where the self-prompted pass found structure it missed.
    - `detach_teacher=True`: y1 learns from the labels only; otherwise the KL term would also drag the
      better teacher towards the worse student, which lowers the loss without improving y0.
    - `temperature=1.0`: the classes are few and the logits already calibrated by Dice; T scales as T^2.
    - empty masks: the network's training rule `empty_box_train: full_image` (default) box-prompts every
      sample, so the KL acts everywhere; with `keep_previous`, where pass 1 found nothing y1 equals y0, so the
      KL term is exactly 0 there and only the Dice term (on y1 = y0) acts.
    - `dice_weight=1.0`: the paper's supervised term is Dice alone; SAMed weighs 0.8 Dice + 0.2 CE.
    - Dice is over the batch (`batch=True`) and without background, so slices with no structure count
      through the whole batch instead of giving each a 0/1 loss.
    With `distill=False`, or when the network returns one tensor (self-prompting off, or eval), the loss is
    the supervised part on that tensor.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        distill: bool = True,
        kl: KLDirection = "forward",
        temperature: float = 1.0,
        detach_teacher: bool = True,
        ce_weight: float = 0.0,
        dice_weight: float = 1.0,
        dice_include_background: bool = False,
    ) -> None:
        super().__init__()
        if kl not in ("forward", "reverse"):
            raise ValueError(f"kl must be 'forward' or 'reverse', got {kl!r}")
        self.alpha, self.distill, self.kl, self.temperature = alpha, distill, kl, temperature
        self.detach_teacher, self.ce_weight, self.dice_weight = detach_teacher, ce_weight, dice_weight
        self.dice = DiceLoss(include_background=dice_include_background, to_onehot_y=True, softmax=True, batch=True)
        self.last_terms: dict[str, float] = {}

    def forward(self, output: Tensor | SAMSPOutput, target: Tensor) -> Tensor:
        final, first = output if isinstance(output, SAMSPOutput) else (output, None)
        terms = {"dice": self.dice_weight * self.dice(final, target)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(final, target[:, 0].long())
        if self.distill and first is not None:
            terms["kl"] = self.alpha * self.distillation(first, final)
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return sum(terms.values())

    def distillation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Per-pixel KL between the class distributions of the two passes, averaged over pixels."""
        if self.detach_teacher:
            teacher = teacher.detach()
        t = self.temperature
        log_s = F.log_softmax(student / t, dim=1)
        log_t = F.log_softmax(teacher / t, dim=1)
        p, log_p, log_q = (log_t.exp(), log_t, log_s) if self.kl == "forward" else (log_s.exp(), log_s, log_t)
        return (p * (log_p - log_q)).sum(1).mean() * t * t
