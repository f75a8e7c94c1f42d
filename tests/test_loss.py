import math

import numpy as np
import pytest
import torch

from samsp_monai import SAMSPLoss, SAMSPOutput


def _logits(*fg: float) -> torch.Tensor:
    """(1, 2, 1, len(fg)) class logits with the network's zero background logit."""
    fg_t = torch.tensor(fg).view(1, 1, 1, -1)
    return torch.cat([torch.zeros_like(fg_t), fg_t], 1)


def _bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_kl_is_zero_when_passes_agree():
    loss = SAMSPLoss()
    x = _logits(0.3, -2.0)
    assert loss.distillation(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_forward_and_reverse_kl_match_hand_computation():
    student, teacher = _logits(0.0, 0.0), _logits(math.log(3.0), math.log(1 / 3))  # p = .5, .5 vs .75, .25
    fwd = (_bernoulli_kl(0.75, 0.5) + _bernoulli_kl(0.25, 0.5)) / 2
    rev = (_bernoulli_kl(0.5, 0.75) + _bernoulli_kl(0.5, 0.25)) / 2
    assert SAMSPLoss(kl="forward").distillation(student, teacher).item() == pytest.approx(fwd, rel=1e-5)
    assert SAMSPLoss(kl="reverse").distillation(student, teacher).item() == pytest.approx(rev, rel=1e-5)


def test_total_is_dice_plus_alpha_times_kl_and_terms_are_reported():
    target = torch.tensor([[[[1, 0]]]])
    final, first = _logits(4.0, -4.0), _logits(0.0, 0.0)
    loss = SAMSPLoss(alpha=0.5)
    total = loss(SAMSPOutput(final, first), target)
    dice = loss.dice(final, target)
    assert total.item() == pytest.approx(dice.item() + 0.5 * loss.distillation(first, final).item(), rel=1e-6)
    assert set(loss.last_terms) == {"dice", "kl"}


def test_distillation_off_and_single_tensor_give_the_supervised_loss_only():
    target = torch.tensor([[[[1, 0]]]])
    final, first = _logits(2.0, -1.0), _logits(-3.0, 3.0)
    off = SAMSPLoss(distill=False)(SAMSPOutput(final, first), target)
    single = SAMSPLoss()(final, target)
    assert off.item() == pytest.approx(single.item()) == pytest.approx(SAMSPLoss().dice(final, target).item())


def test_ce_term_is_weighted_cross_entropy():
    target = torch.tensor([[[[1, 0]]]])
    final = _logits(2.0, -1.0)
    loss = SAMSPLoss(ce_weight=0.25)
    loss(final, target)
    expected = 0.25 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert loss.last_terms["ce"] == pytest.approx(expected, rel=1e-5)


def test_teacher_is_detached_by_default():
    student = _logits(0.0, 1.0).requires_grad_(True)
    teacher = _logits(2.0, -1.0).requires_grad_(True)
    SAMSPLoss().distillation(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    teacher2 = _logits(2.0, -1.0).requires_grad_(True)
    SAMSPLoss(detach_teacher=False).distillation(_logits(0.0, 1.0), teacher2).backward()
    assert teacher2.grad.abs().sum() > 0


def plain_foreground_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> float:
    """1 - mean over foreground classes of soft Dice over the whole batch (numpy, no MONAI)."""
    probs = torch.softmax(logits, 1).numpy()
    onehot = np.eye(logits.shape[1])[target[:, 0].numpy()].transpose(0, 3, 1, 2)
    dice = [
        2 * (probs[:, c] * onehot[:, c]).sum() / (probs[:, c].sum() + onehot[:, c].sum() + 1e-5)
        for c in range(1, logits.shape[1])
    ]
    return 1.0 - float(np.mean(dice))


def test_dice_term_is_foreground_soft_dice_over_the_batch():
    logits = torch.randn(2, 3, 4, 5) * 3
    target = torch.randint(0, 3, (2, 1, 4, 5))
    loss = SAMSPLoss()
    loss(logits, target)
    assert loss.last_terms["dice"] == pytest.approx(plain_foreground_dice_loss(logits, target), rel=1e-4)


def test_background_does_not_count_in_the_dice_term():
    """A prediction that is all background on an image with a small structure: the foreground Dice is ~0, so
    the loss is ~1; counting the (nearly perfect) background would halve it."""
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[..., 3:5, 3:5] = 1
    logits = _logits(*([-20.0] * 64)).view(1, 2, 8, 8)
    assert SAMSPLoss()(logits, target).item() == pytest.approx(1.0, abs=1e-3)


def plain_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T^2 * mean over pixels of KL(softmax(teacher / T) || softmax(student / T)) (numpy)."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(teacher.numpy() / t), softmax(student.numpy() / t)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean()) * t * t


def test_default_loss_is_foreground_dice_plus_kl_with_weight_one():
    final, first = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4))
    loss = SAMSPLoss()
    assert loss.last_terms == {}
    expected = plain_foreground_dice_loss(final, target) + plain_kl(first, final, 1.0)
    assert loss(SAMSPOutput(final, first), target).item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_temperature_softens_both_distributions_and_scales_by_its_square(kl):
    student, teacher = torch.randn(1, 3, 4, 4) * 3, torch.randn(1, 3, 4, 4) * 3
    args = (student, teacher) if kl == "forward" else (teacher, student)
    expected = plain_kl(*args, 2.0)
    assert SAMSPLoss(kl=kl, temperature=2.0).distillation(student, teacher).item() == pytest.approx(expected, rel=1e-4)


def test_unknown_kl_direction_is_refused_by_name():
    with pytest.raises(ValueError, match="kl must be 'forward' or 'reverse', got 'both'"):
        SAMSPLoss(kl="both")
