"""Ground-truth box prompts in training (gt_box_prob / gt_box_jitter) and their per-epoch schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, small_samsp
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from samsp_monai import SAMSPError
from samsp_monai.model.boxes import jitter_boxes
from samsp_monai.training.curriculum import GtBoxSchedule


def _prompt_boxes(net) -> list[torch.Tensor]:
    """The boxes of every prompt-encoder call (None for the no-prompt pass)."""
    seen = []
    net.sam.prompt_encoder.register_forward_pre_hook(lambda _, args, kw: seen.append(kw["boxes"]), with_kwargs=True)
    return seen


def _label() -> torch.Tensor:
    """Two 64x64 label maps: image 0 holds classes 1 and 2, image 1 only class 1."""
    target = torch.zeros(2, 1, 64, 64, dtype=torch.long)
    target[0, 0, 10:30, 5:45] = 1  # rows 10..29, columns 5..44: box (x0, y0, x1, y1) = (5, 10, 44, 29)
    target[0, 0, 40:50, 50:60] = 2  # (50, 40, 59, 49)
    target[1, 0, 3:9, 20:21] = 1  # (20, 3, 20, 8)
    return target


def test_with_probability_one_and_no_jitter_pass_two_gets_the_ground_truth_boxes():
    x, target = torch.rand(2, 1, 64, 64), _label()
    reference = small_samsp(num_classes=2).train()
    state = reference.state_dict()
    plain_boxes = _prompt_boxes(reference)
    reference(x)
    net = small_samsp(num_classes=2, gt_box_prob=1.0, gt_box_jitter=0.0).train()
    net.load_state_dict(state)
    boxes = _prompt_boxes(net)
    net(x, target)
    assert boxes[0] is None and len(boxes) == 2
    second = boxes[1].reshape(2, 2, 4)
    expected = torch.tensor([[5.0, 10, 44, 29], [50, 40, 59, 49], [20, 3, 20, 8]])
    torch.testing.assert_close(torch.stack([second[0, 0], second[0, 1], second[1, 0]]), expected)
    # class 2 is absent from image 1: it keeps the box of its own first pass
    torch.testing.assert_close(second[1, 1], plain_boxes[1].reshape(2, 2, 4)[1, 1])


def test_probability_zero_is_plain_samsp_and_draws_no_random_numbers():
    x, target = torch.rand(2, 1, 64, 64), _label()
    net = small_samsp(num_classes=2).train()
    rng = torch.get_rng_state()
    with_target = net(x, target)
    assert torch.equal(torch.get_rng_state(), rng)
    without = net(x)
    assert torch.equal(with_target.final, without.final) and torch.equal(with_target.first, without.first)


def test_inference_ignores_the_label():
    x, target = torch.rand(2, 1, 64, 64), _label()
    net = small_samsp(num_classes=2, gt_box_prob=1.0).eval()
    with torch.no_grad():
        assert torch.equal(net(x, target), net(x))


def test_jitter_std_is_a_tenth_of_the_side_capped_and_boxes_stay_valid():
    torch.manual_seed(1)
    boxes = torch.tensor([[100.0, 100, 139, 299]]).expand(20000, 4)  # 40 wide, 200 high
    noisy = jitter_boxes(boxes, 0.1, max_std=8.0, size=512)
    std = (noisy - boxes).std(0)
    torch.testing.assert_close(std, torch.tensor([4.0, 8.0, 4.0, 8.0]), rtol=0.05, atol=0)  # 0.1*40, min(0.1*200, 8)
    edge = jitter_boxes(torch.tensor([[0.0, 0, 3, 63]]).expand(2000, 4), 0.5, 50.0, 64)
    assert edge.min() >= 0 and edge.max() <= 63
    assert torch.all(edge[:, 0] <= edge[:, 2]) and torch.all(edge[:, 1] <= edge[:, 3])
    assert torch.equal(jitter_boxes(boxes, 0.0, 8.0, 512), boxes)


def test_jitter_moves_each_axis_by_its_own_side_and_reaches_the_image_border():
    """A box 10 wide and 20 high, far from the border: x moves with std 0.1 * 10, y with 0.1 * 20, each corner
    around its own value; at fraction 1 the std is the cap. A whole-image box pushed out lands on 0 and size - 1."""
    torch.manual_seed(2)
    boxes = torch.tensor([[500.0, 100, 509, 119]]).expand(20000, 4)
    moved = jitter_boxes(boxes, 0.1, max_std=100.0, size=1024) - boxes
    torch.testing.assert_close(moved.mean(0), torch.zeros(4), rtol=0, atol=0.1)
    torch.testing.assert_close(moved.std(0), torch.tensor([1.0, 2.0, 1.0, 2.0]), rtol=0.03, atol=0)
    capped = jitter_boxes(boxes, 1.0, max_std=3.0, size=1024) - boxes
    torch.testing.assert_close(capped.std(0), torch.full((4,), 3.0), rtol=0.03, atol=0)
    whole = jitter_boxes(torch.tensor([[0.0, 0, 63, 63]]).expand(2000, 4), 0.5, 50.0, 64)
    assert whole.min() == 0 and whole.max() == 63


def test_ground_truth_boxes_replace_a_present_class_with_the_set_probability():
    """gt_box_prob 0.5: about half the (image, class) rows of a present class take the ground-truth box; an
    absent class never does; with jitter, the box moves by SAM's 20 px at 1024, i.e. 1.25 px at 64."""
    torch.manual_seed(3)
    net = small_samsp(num_classes=2, gt_box_prob=0.5, gt_box_jitter=0.0).train()
    target = torch.zeros(2000, 1, 64, 64, dtype=torch.long)
    target[:, 0, 10:30, 5:45] = 1
    own = torch.tensor([1.0, 2, 3, 4]).expand(2000, 2, 4)
    boxes, empty = net.mix_in_gt_boxes(own, torch.zeros(2000, 2, dtype=torch.bool), target)
    gt = (boxes[:, 0] == torch.tensor([5.0, 10, 44, 29])).all(-1)
    assert torch.equal(gt | (boxes[:, 0] == own[:, 0]).all(-1), torch.ones(2000, dtype=torch.bool))
    assert 0.45 < gt.float().mean() < 0.55
    assert torch.equal(boxes[:, 1], own[:, 1]) and not empty.any()
    net.gt_box_prob, net.gt_box_jitter = 1.0, 0.1  # 0.1 * 20 px std along y, capped at 1.25 px
    jittered = net.mix_in_gt_boxes(own, torch.zeros(2000, 2, dtype=torch.bool), target)[0][:, 0]
    torch.testing.assert_close(jittered.std(0)[[1, 3]], torch.full((2,), 1.25), rtol=0.06, atol=0)


def test_a_class_refined_from_its_ground_truth_box_is_no_longer_empty():
    """With empty_box_train=keep_previous, a class whose first pass was empty but which takes its ground-truth box
    is refined from that box, and a class that keeps its own (non-empty) box is refined from it: both equal
    segment_anything's mask token c prompted with that box."""
    torch.manual_seed(0)
    net = small_samsp(num_classes=2, gt_box_prob=1.0, gt_box_jitter=0.0, empty_box_train="keep_previous").train()
    previous = torch.full((1, 2, 16, 16), -5.0)
    previous[0, 0, 2:6, 3:9] = 5.0  # class 1 at mask rows 2..5, columns 3..8: box (12, 8, 35, 23) at 64 px
    target = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    target[0, 0, 40:50, 30:60] = 2  # class 2 only: box (30, 40, 59, 49)
    with torch.no_grad():
        embedding = net.sam.image_encoder(net.preprocess(torch.rand(1, 1, 64, 64)))
        refined = net.decode(embedding, previous, target)
        pe = net.sam.prompt_encoder.get_dense_pe()
        for c, box in enumerate([[12.0, 8, 35, 23], [30.0, 40, 59, 49]]):
            sparse, dense = net.sam.prompt_encoder(points=None, boxes=torch.tensor([box]), masks=None)
            expected = net.sam.mask_decoder.class_logits(embedding, pe, sparse, dense)[0, c]
            torch.testing.assert_close(refined[0, c], expected, rtol=1e-4, atol=1e-4)
            assert (refined[0, c] - previous[0, c]).abs().max() > 1e-2


def test_schedule_anneals_the_probability_per_epoch_on_a_real_engine():
    net = small_samsp()
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, net.gt_box_prob, net.gt_box_jitter)))
    GtBoxSchedule(net, prob=1.0, jitter=0.05, anneal_epochs=4).attach(engine)
    engine.run([0], max_epochs=6)
    assert seen == [(1, 1.0, 0.05), (2, 0.75, 0.05), (3, 0.5, 0.05), (4, 0.25, 0.05), (5, 0.0, 0.05), (6, 0.0, 0.05)]
    assert GtBoxSchedule(net, prob=0.3).value(50) == 0.3


@pytest.mark.parametrize("kwargs", [{"prob": "0.5"}, {"prob": 1.5}, {"prob": 0.5, "anneal_epochs": -1}])
def test_schedule_refuses_bad_settings(kwargs):
    with pytest.raises(SAMSPError, match="gt_box"):
        GtBoxSchedule(small_samsp(), **kwargs)


def test_bundle_passes_the_label_to_the_network_when_ground_truth_boxes_are_on(tmp_path):
    configs = [str(REPO / "bundle/configs/train.json"), str(REPO / "bundle/configs/demo.json")]
    overrides = {"bundle_root": str(tmp_path), "max_epochs": 1, "slices_per_volume": 2, "image_size": 64}
    wf = ConfigWorkflow(
        config_file=configs, workflow_type="train", gt_box_prob=1.0, gt_box_anneal_epochs=2, **overrides
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    targets = []
    network.register_forward_pre_hook(lambda _, args, kw: targets.append(kw.get("target")), with_kwargs=True)
    trainer = wf.parser.get_parsed_content("train#trainer")
    labels = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: labels.append(e.state.batch["label"]))
    wf.run()
    wf.finalize()
    train_targets = [t for t in targets if t is not None]
    assert len(train_targets) == len(labels) == 6  # every training step, no validation step
    assert all(torch.equal(t.cpu(), torch.as_tensor(label)) for t, label in zip(train_targets, labels, strict=True))
    assert network.gt_box_prob == 1.0  # epoch 1 of a 2-epoch anneal


@pytest.mark.parametrize("geometry, expected", [("sam", [5.0, 10, 44, 19]), ("stretch", [5.0, 20, 44, 39])])
def test_ground_truth_boxes_are_framed_like_the_input(geometry, expected):
    """A 32x64 input: `sam` pads it below (rows kept), `stretch` doubles its rows to fill the 64x64 frame."""
    target = torch.zeros(1, 1, 32, 64, dtype=torch.long)
    target[0, 0, 10:20, 5:45] = 1
    net = small_samsp(geometry=geometry, gt_box_prob=1.0, gt_box_jitter=0.0).train()
    boxes = _prompt_boxes(net)
    net(torch.rand(1, 1, 32, 64), target)
    torch.testing.assert_close(boxes[1], torch.tensor([expected]))
