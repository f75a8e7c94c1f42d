"""Self-consistency of SAM-SP: how much the self-prompted pass changes the prompt-free pass-1 prediction.

SAM-SP predicts every image twice, without a prompt (pass 1) and prompted by the box of its own pass-1 mask
(final pass). Where both agree the model is sure of what it saw; where the box prompt redraws the mask, it
was not. The mean disagreement of their class probabilities over a whole volume is a free score for ranking
which volume a human should annotate next: it needs no labels, no dropout sampling and one forward pass.
On a demo-trained model, a hard-label `1 - Dice(pass 1, final)` ranked volumes with large wrongly labelled
regions as consistent (the box of a large region prompts the same region again); the probability distance
ranked them least consistent, and a noise-corrupted volume above its clean original.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from ..errors import SAMSPError
from ..model.network import SAMSP


@contextmanager
def both_passes(network: SAMSP) -> Iterator[SAMSP]:
    """SAMSP returns `SAMSPOutput(final, first)` when its own training flag is set (and `train_output` is
    "pair"). Setting only that flag (not `.train()`, which recurses) keeps every submodule, dropout included,
    in eval mode, and the inference rule for empty masks stays in force; the final pass is then the single
    self-prompted pass (the inference one when `iterations` is 1)."""
    saved = network.training, network.train_output, network.empty_box_train
    network.training, network.train_output, network.empty_box_train = True, "pair", network.empty_box
    try:
        yield network
    finally:
        network.training, network.train_output, network.empty_box_train = saved


def probability_disagreement(first: Tensor, final: Tensor) -> float:
    """Mean over voxels of the total variation distance between the class probabilities of two logit maps
    (B, C, ...): 0 where both passes say the same with the same confidence, 1 where they are sure of different
    classes. Averaged over the whole image, so a wrongly segmented large region weighs more than a slightly
    moved border of a small structure."""
    return 0.5 * float((first.softmax(1) - final.softmax(1)).abs().sum(1).mean())


@torch.no_grad()
def self_consistency(
    network: SAMSP, image: Tensor, inferer: Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor]
) -> float:
    """Disagreement of pass 1 and the final pass on one (C, *spatial) image or volume, through `inferer`
    (e.g. the bundle's `SliceInferer`, which stacks per-slice outputs into volumes). A single-pass network
    (`self_prompt=False`) has no second pass to compare and is refused."""
    if not network.self_prompt:
        raise SAMSPError(
            "self-consistency compares the self-prompted pass with pass 1; this model was built with "
            "self_prompt False (single pass), so it has none: rank with the strategy 'random' or 'epistemic'"
        )
    with both_passes(network):
        final, first = inferer(image[None], lambda x: tuple(network(x)))
    return probability_disagreement(first, final)


class NotScoredYet(SAMSPError):
    """Next Sample by self-consistency was asked for before any unlabelled image had its score."""


def least_consistent_image(images: Sequence[str], score_of: Callable[[str], float | None]) -> tuple[str, float]:
    """The unlabelled image with the highest self-consistency score (the one the model is least sure of).

    Unscored images come last. With none scored yet (the scoring still runs after start-up or a training), serving
    an arbitrary image with a made-up score would look like a ranking; `NotScoredYet` says what to do instead.
    """
    scores = {image: score for image in images if (score := score_of(image)) is not None}
    if not scores:
        raise NotScoredYet(
            f"none of the {len(images)} unlabelled images has a self-consistency score yet: scoring runs at start-up "
            "and after each training (or POST /scoring/<model>_consistency); wait for it to finish, or choose the "
            "strategy random"
        )
    image = max(scores, key=scores.__getitem__)
    return image, scores[image]
