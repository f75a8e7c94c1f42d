import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import small_samsp

from samsp_monai import SAMSP, SAMSPError, SAMSPOutput
from samsp_monai.model.boxes import masks_to_boxes


def _count_encoder_calls(net) -> list[int]:
    calls = [0]
    net.sam.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("iterations", [1, 3])
def test_image_encoder_runs_once_per_forward(iterations):
    net = small_samsp(iterations=iterations).eval()
    calls = _count_encoder_calls(net)
    transformer_calls = [0]
    net.sam.mask_decoder.transformer.register_forward_hook(
        lambda *_: transformer_calls.__setitem__(0, transformer_calls[0] + 1)
    )
    net(torch.rand(2, 1, 64, 64))
    assert calls[0] == 1
    assert transformer_calls[0] == 1 + iterations  # one decoder transformer call per pass for the whole batch


def test_training_returns_both_passes_and_eval_returns_final_logits():
    net = small_samsp(num_classes=2)
    x = torch.rand(3, 1, 40, 52)
    out = net.train()(x)
    assert isinstance(out, SAMSPOutput)
    assert out.final.shape == out.first.shape == (3, 3, 40, 52)
    assert torch.all(out.final[:, 0] == 0)  # background logit fixed at 0
    pred = net.eval()(x)
    assert isinstance(pred, torch.Tensor) and pred.shape == (3, 3, 40, 52)


def test_batch_gives_one_output_per_image_equal_to_single_runs():
    net = small_samsp(num_classes=2, in_channels=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        batch = net(x)
        singles = torch.cat([net(x[:1]), net(x[1:])])
    assert batch.shape[0] == 2
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-4)


def test_self_prompt_off_is_the_single_pass():
    net = small_samsp().eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        sp = net(x)
        net.self_prompt = False
        single = net(x)
        net.self_prompt = True
        first = net.train()(x).first
        net.self_prompt = False
        single_train = net(x)
    assert isinstance(single_train, torch.Tensor)  # one tensor in training too: nothing to distil
    torch.testing.assert_close(single, first)
    torch.testing.assert_close(single_train, first)
    assert not torch.equal(sp, single)


def test_second_pass_is_prompted_by_the_box_of_the_first():
    net = small_samsp().eval()
    embeddings = net.sam.image_encoder(net.preprocess(torch.rand(1, 1, 64, 64)))
    previous = torch.full((1, 1, 16, 16), -5.0)
    previous[..., 2:6, 3:9] = 5.0
    seen = {}
    net.sam.prompt_encoder.register_forward_hook(lambda m, args, kw, out: seen.update(kw), with_kwargs=True)
    net.decode(embeddings, previous)
    assert seen["boxes"].tolist() == [[12.0, 8.0, 35.0, 23.0]]  # low-res box (3,2)-(8,5) at 4x scale


@pytest.mark.parametrize("rule", ["keep_previous", "full_image"])
def test_empty_first_pass_follows_the_configured_rule(rule):
    net = small_samsp(empty_box=rule).eval()
    embeddings = net.sam.image_encoder(net.preprocess(torch.rand(1, 1, 64, 64)))
    nothing = torch.full((1, 1, 16, 16), -5.0)
    refined = net.decode(embeddings, nothing)
    assert torch.equal(refined, nothing) == (rule == "keep_previous")


def test_a_self_prompted_pass_decodes_only_the_classes_the_previous_pass_found():
    """With keep_previous, (image, class) pairs without a box are not decoded, and the result equals decoding
    every pair and keeping the empty pairs' previous logits; with nothing found, the decoder does not run."""
    net = small_samsp(num_classes=2).eval()
    rows = []
    net.sam.mask_decoder.transformer.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    previous = torch.full((3, 2, 16, 16), -5.0)
    previous[0, 0, 2:6, 2:6] = previous[0, 1, 8:12, 9:13] = previous[1, 0, 4:9, 3:7] = 5.0  # image 2: nothing
    with torch.no_grad():
        embeddings = net.sam.image_encoder(net.preprocess(torch.rand(3, 1, 64, 64)))
        refined = net.decode(embeddings, previous)
        boxes, empty = masks_to_boxes(net.labels(previous), 4)
        every_pair = net.decode_boxes(embeddings, boxes)
        assert rows == [3, 6]
        assert torch.allclose(refined, torch.where(empty[..., None, None], previous, every_pair), atol=1e-5)
        assert not torch.equal(refined[0], previous[0]) and torch.equal(refined[2], previous[2])
        rows.clear()
        assert torch.equal(net.decode(embeddings, torch.full_like(previous, -5.0)), torch.full_like(previous, -5.0))
        assert rows == []


@pytest.mark.parametrize("train_rule, infer_rule", [("full_image", "keep_previous"), ("keep_previous", "full_image")])
def test_training_and_inference_have_their_own_empty_box_rule(train_rule, infer_rule):
    net = small_samsp(empty_box=infer_rule, empty_box_train=train_rule)
    embeddings = net.sam.image_encoder(net.preprocess(torch.rand(1, 1, 64, 64)))
    nothing = torch.full((1, 1, 16, 16), -5.0)
    with torch.no_grad():
        assert torch.equal(net.train().decode(embeddings, nothing), nothing) == (train_rule == "keep_previous")
        assert torch.equal(net.eval().decode(embeddings, nothing), nothing) == (infer_rule == "keep_previous")
    with pytest.raises(ValueError, match="empty_box_train"):
        small_samsp(empty_box_train="skip")


def test_training_forward_records_which_first_pass_masks_were_empty():
    net = small_samsp(num_classes=2).train()
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        net(x)
        recorded = net.empty_prompts
        first = net.decode(net.sam.image_encoder(net.preprocess(x)))
    expected = ~net.labels(first).flatten(2).any(-1)
    assert recorded.shape == (4, 2) and torch.equal(recorded, expected)
    net.empty_prompts = None
    with torch.no_grad():
        net.eval()(x)
    assert net.empty_prompts is None  # inference records nothing


def test_gradients_reach_lora_and_decoder_but_not_frozen_encoder():
    net = small_samsp(encoder_training="lora").train()
    out = net(torch.rand(2, 1, 64, 64))
    (out.final.sum() + out.first.sum()).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in lora if "lora_B" in n)
    assert all(grads[n] is not None for n in lora)
    frozen = [n for n, p in net.sam.image_encoder.named_parameters() if "lora_" not in n]
    assert frozen and all(not net.sam.image_encoder.get_parameter(n).requires_grad for n in frozen)
    assert all(grads[f"sam.image_encoder.{n}"] is None for n in frozen)
    assert grads["sam.mask_decoder.output_upscaling.0.weight"].abs().sum() > 0
    assert all(p.requires_grad for p in net.sam.prompt_encoder.parameters())


def test_lora_rank_alpha_and_targets_are_configurable():
    net = small_samsp(lora_rank=2, lora_alpha=8, lora_targets=["qkv", "proj"])
    qkv = net.sam.image_encoder.blocks[0].attn.qkv
    assert qkv.lora_A["default"].weight.shape[0] == 2 and qkv.scaling["default"] == 4.0
    assert hasattr(net.sam.image_encoder.blocks[0].attn.proj, "lora_A")


def test_full_and_frozen_encoder_modes():
    full = small_samsp(encoder_training="full")
    assert all(p.requires_grad for p in full.sam.image_encoder.parameters())
    frozen = small_samsp(encoder_training="frozen")
    assert not any(p.requires_grad for p in frozen.sam.image_encoder.parameters())
    with pytest.raises(ValueError, match="encoder_training"):
        small_samsp(encoder_training="half")


SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # segment_anything's RGB stats


def test_preprocess_scales_unit_intensities_to_sam_pixel_statistics():
    net = small_samsp()
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat_interleave(4).expand(1, 1, 64, 16)
    out = net.preprocess(x)
    assert out.shape == (1, 3, 64, 64)
    column_value = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)[0, 0, 0]
    for c, (mean, std) in enumerate(zip(SAM_PIXEL_MEAN, SAM_PIXEL_STD, strict=True)):
        torch.testing.assert_close(out[0, c, 5], (column_value * 255.0 - mean) / std)


def _plain_boxes(label: torch.Tensor, num_classes: int, scale: int) -> list[list[float]]:
    """Per-class (x0, y0, x1, y1) around class c of a (h, w) label map, covering whole low-res pixels."""
    boxes = []
    for c in range(1, num_classes + 1):
        ys, xs = torch.where(label == c)
        x0, y0, x1, y1 = (int(v) for v in (xs.min(), ys.min(), xs.max(), ys.max()))
        boxes.append([x0 * scale, y0 * scale, x1 * scale + scale - 1, y1 * scale + scale - 1])
    return boxes


def test_each_class_is_refined_by_its_own_box():
    """Class c's final logits are SAM's mask token c prompted with the box around class c's first-pass mask.

    The input is at mask resolution (img_size / 4), so the network's resizing of its outputs is the identity and
    both passes are seen as the decoder gives them. The expectation comes straight from segment_anything's
    prompt encoder and mask decoder, one box at a time.
    """
    num_classes, mask_size = 3, 16
    x = torch.rand(1, 1, mask_size, mask_size)
    for seed in range(50):  # a network whose first pass gives every class its own, different box
        torch.manual_seed(seed)
        net = small_samsp(num_classes=num_classes).train()
        with torch.no_grad():
            out = net(x)
        label = out.first[0].argmax(0)
        present = all((label == c).any() for c in range(1, num_classes + 1))
        if present and len({tuple(b) for b in _plain_boxes(label, num_classes, 4)}) == num_classes:
            break
    else:
        pytest.fail("no network gave three distinct first-pass boxes")
    boxes = torch.tensor(_plain_boxes(label, num_classes, 64 // mask_size), dtype=torch.float32)
    with torch.no_grad():
        embedding = net.sam.image_encoder(net.preprocess(x))
        pe = net.sam.prompt_encoder.get_dense_pe()
        by_box = []
        for box in boxes:
            sparse, dense = net.sam.prompt_encoder(points=None, boxes=box[None], masks=None)
            by_box.append(net.sam.mask_decoder.class_logits(embedding, pe, sparse, dense)[0])
    for c in range(num_classes):
        torch.testing.assert_close(out.final[0, c + 1], by_box[c][c], rtol=1e-4, atol=1e-4)
        other = by_box[(c + 1) % num_classes][c]  # token c with another class's box: clearly outside tolerance
        assert (out.final[0, c + 1] - other).abs().max() > 1e-3


def test_training_refines_once_whatever_the_inference_iterations():
    """Training always uses one self-prompt: its output equals one-iteration inference, not three-iteration."""
    x = torch.rand(2, 1, 64, 64)
    for seed in range(50):  # a network whose second refinement moves its boxes, so iteration counts show
        torch.manual_seed(seed)
        net = small_samsp(num_classes=2, iterations=3).eval()
        with torch.no_grad():
            thrice = net(x)
            net.iterations = 1
            once = net(x)
        if not torch.allclose(once, thrice, atol=1e-4):
            break
    else:
        pytest.fail("no network changed its output with more iterations")
    net.iterations = 3
    with torch.no_grad():
        trained = net.train()(x).final
    torch.testing.assert_close(trained, once)


def test_outputs_at_input_size_are_the_bilinear_upsampling_of_mask_resolution_logits():
    """An image given at mask resolution (16 px) and the same image upsampled to the model size (64 px) give
    one embedding, so the 64 px output must be the bilinear upsampling of the 16 px one."""
    net = small_samsp(num_classes=2).eval()
    small = torch.rand(1, 1, 16, 16)
    large = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        at_16, at_64 = net(small), net(large)
    expected = F.interpolate(at_16[:, 1:], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(at_64[:, 1:], expected, rtol=1e-4, atol=1e-4)
    assert torch.all(at_64[:, 0] == 0)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"in_channels": 2}, "^in_channels must be 1"),
        ({"empty_box": "x"}, "^empty_box must be"),
        ({"empty_box_train": "x"}, "^empty_box_train must be"),
        ({"train_output": "both"}, "^train_output must be 'pair' or 'final', got 'both'$"),
        ({"dropout": 1.0}, r"^dropout must be in \[0, 1\), got 1.0$"),
        ({"dropout": 1.5}, r"^dropout must be in \[0, 1\), got 1.5$"),
    ],
)
def test_bad_construction_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        small_samsp(**args)


@pytest.mark.parametrize("prob, jitter", [(1.5, 0.1), (-0.1, 0.1), (0.5, -0.1)])
def test_bad_ground_truth_box_settings_are_named(prob, jitter):
    with pytest.raises(SAMSPError, match=rf"^need 0 <= gt_box_prob <= 1 and gt_box_jitter >= 0, got {prob}, {jitter}$"):
        small_samsp(gt_box_prob=prob, gt_box_jitter=jitter)


def test_network_args_survive_json_and_leave_out_the_base_checkpoint():
    """model.pt's network_args are compared with JSON configs: sequences are lists, and the SAM checkpoint path
    (whose weights the trained model already holds) is not among them."""
    args = small_samsp(lora_targets=("qkv",)).network_args
    assert json.loads(json.dumps(args)) == args
    assert args["lora_targets"] == ["qkv"] and "checkpoint" not in args


def test_the_lora_layout_reaches_the_encoder():
    """SAMed's separate q and v adapters have other trainable parameters than peft's fused qkv adapter."""

    def trainable(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in net.sam.image_encoder.named_parameters() if p.requires_grad}

    assert trainable(small_samsp(lora_layout="q_v")) != trainable(small_samsp(lora_layout="qkv"))


def test_defaults_are_the_papers_model():
    """SAMSP() without arguments: SAM ViT-B at 1024 on RGB, LoRA rank 4, one self-prompt, one class, no encoder
    checkpointing, and SAM's box jitter of 10 % of the side when ground-truth boxes are switched on."""
    defaults = {k: p.default for k, p in inspect.signature(SAMSP).parameters.items()}
    expected = {"variant": "vit_b", "img_size": 1024, "in_channels": 3, "num_classes": 1, "lora_rank": 4}
    expected |= {"iterations": 1, "encoder_checkpointing": False, "gt_box_prob": 0.0, "gt_box_jitter": 0.1}
    assert {k: defaults[k] for k in expected} == expected
