"""The batched decoder against segment_anything's own MaskDecoder run image by image."""

import pytest
import torch
from conftest import small_samsp
from segment_anything.modeling import MaskDecoder

from samsp_monai.model.batched_decoder import BatchedMaskDecoder

# Low-resolution (16 x 16) class rectangles per image as (y0, y1, x0, x1), inclusive; None: class absent.
RECTS = [
    [(2, 5, 3, 8), (9, 14, 1, 4), None],
    [(0, 15, 0, 15), None, (12, 13, 10, 15)],
]


def _previous(n: int) -> torch.Tensor:
    """Foreground logits (2, n, 16, 16) whose argmax label map holds RECTS' first n classes."""
    logits = torch.full((2, n, 16, 16), -5.0)
    for b, rects in enumerate(RECTS):
        for c, rect in enumerate(rects[:n]):
            if rect is not None:
                y0, y1, x0, x1 = rect
                logits[b, c, y0 : y1 + 1, x0 : x1 + 1] = 5.0 + c  # later classes win overlaps
    return logits


def _plain_decoder(net) -> MaskDecoder:
    """segment_anything's MaskDecoder with the same weights as the network's batched one."""
    ours = net.sam.mask_decoder
    plain = MaskDecoder(
        transformer_dim=ours.transformer_dim,
        transformer=ours.transformer,
        num_multimask_outputs=ours.num_multimask_outputs,
        iou_head_depth=ours.iou_prediction_head.num_layers,
        iou_head_hidden_dim=ours.iou_prediction_head.layers[0].out_features,
    )
    plain.load_state_dict(ours.state_dict())
    return plain.eval()


def _box(rect, n_img: int = 64, low: int = 16) -> list[float]:
    """The box SAM-SP must prompt with for a low-resolution rectangle (whole image when absent)."""
    s = n_img // low
    y0, y1, x0, x1 = rect if rect is not None else (0, low - 1, 0, low - 1)
    return [x0 * s, y0 * s, x1 * s + s - 1, y1 * s + s - 1]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("rule", ["keep_previous", "full_image"])
def test_one_call_equals_segment_anything_per_image_loop(n, rule):
    net = small_samsp(num_classes=n, empty_box=rule).eval()
    plain = _plain_decoder(net)
    classes = net.sam.mask_decoder.class_tokens
    previous = _previous(n)
    with torch.no_grad():
        embeddings = net.sam.image_encoder(net.preprocess(torch.rand(2, 1, 64, 64)))
        batched = net.decode(embeddings, previous)
        pe = net.sam.prompt_encoder.get_dense_pe()
        expected = torch.empty_like(previous)
        for b in range(2):
            boxes = torch.tensor([_box(rect) for rect in RECTS[b][:n]])
            sparse, dense = net.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            rows = plain.predict_masks(embeddings[b : b + 1], pe, sparse, dense)[0][:, classes]
            for c in range(n):
                absent = RECTS[b][c] is None and rule == "keep_previous"
                expected[b, c] = previous[b, c] if absent else rows[c, c]
    assert batched.shape == (2, n, 16, 16)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)


def test_prompt_free_pass_of_a_batch_equals_single_images():
    net = small_samsp(num_classes=2).eval()
    plain = _plain_decoder(net)
    with torch.no_grad():
        embeddings = net.sam.image_encoder(net.preprocess(torch.rand(2, 1, 64, 64)))
        batched = net.decode(embeddings)
        pe = net.sam.prompt_encoder.get_dense_pe()
        sparse, dense = net.sam.prompt_encoder(points=None, boxes=None, masks=None)
        singles = [plain.predict_masks(e[None], pe, sparse, dense)[0] for e in embeddings]
    classes = net.sam.mask_decoder.class_tokens
    assert classes == [0, 4]  # class 1 is SAM's single-mask token, class 2 one more token behind SAM's four
    torch.testing.assert_close(batched, torch.cat(singles)[:, classes], rtol=1e-5, atol=1e-5)


def test_one_image_with_many_prompts_behaves_like_segment_anything():
    net = small_samsp(num_classes=2).eval()
    plain = _plain_decoder(net)
    with torch.no_grad():
        embedding = net.sam.image_encoder(net.preprocess(torch.rand(1, 1, 64, 64)))
        pe = net.sam.prompt_encoder.get_dense_pe()
        boxes = torch.tensor([[0.0, 0.0, 20.0, 30.0], [10.0, 5.0, 63.0, 40.0], [3.0, 3.0, 9.0, 9.0]])
        sparse, dense = net.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        ours = net.sam.mask_decoder(embedding, pe, sparse, dense, multimask_output=False)
        theirs = plain(embedding, pe, sparse, dense, multimask_output=False)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rows_that_do_not_group_over_the_images_are_refused():
    net = small_samsp()
    decoder = net.sam.mask_decoder
    assert isinstance(decoder, BatchedMaskDecoder)
    embeddings = torch.zeros(2, 32, 4, 4)
    sparse, dense = net.sam.prompt_encoder(points=None, boxes=torch.zeros(3, 4), masks=None)
    with pytest.raises(ValueError, match="3 prompt rows cannot be grouped over 2 images"):
        decoder(embeddings, net.sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is a CUDA notion")
def test_self_prompting_forward_never_waits_on_the_host():
    net = small_samsp(num_classes=3).cuda().eval()
    x = torch.rand(2, 1, 64, 64, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            net(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
