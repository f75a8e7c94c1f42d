"""Class tokens loaded from an official-layout checkpoint: distinct classes at init, SAM's box output for one."""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samsp_monai import SAMSP, build_sam, masks_to_boxes


@pytest.fixture(scope="module")
def official_vit_test(tmp_path_factory):
    """A random vit_test state dict in the official layout: token 0 plus 3 multimask tokens, like SAM's files."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_test.pth"
    torch.save(build_sam("vit_test", 64, num_classes=1).state_dict(), path)
    return path


def _net(path, num_classes: int, in_channels: int = 1) -> SAMSP:
    return SAMSP("vit_test", 64, num_classes, in_channels, checkpoint=path).eval()


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classes_start_distinct_and_every_class_gets_pixels_and_boxes(official_vit_test, num_classes):
    net = _net(official_vit_test, num_classes)
    official = torch.load(official_vit_test, weights_only=True)
    tokens = net.sam.mask_decoder.mask_tokens.weight
    assert torch.equal(tokens, official["mask_decoder.mask_tokens.weight"][[0, 1, 2, 3] + [0] * (num_classes - 1)])
    assert net.sam.mask_decoder.class_tokens == [0, *range(4, num_classes + 3)]
    head0 = official["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"]
    assert torch.equal(net.sam.mask_decoder.output_hypernetworks_mlps[0].layers[2].weight, head0)  # class 1: SAM's
    for head in net.sam.mask_decoder.output_hypernetworks_mlps[4:]:
        step = (head.layers[2].weight - head0).pow(2).mean().sqrt() / head0.pow(2).mean().sqrt()
        assert 0.005 < step < 0.02  # about 1% of the weights' RMS: still SAM's box-prompt head
    with torch.no_grad():
        first = net.decode(net.sam.image_encoder(net.preprocess(torch.rand(4, 1, 64, 64))))
    for a in range(num_classes):
        for b in range(a + 1, num_classes):
            assert not torch.allclose(first[:, a], first[:, b], rtol=0, atol=1e-4)
    labels = net.labels(first)
    assert torch.all(labels.sum((0, 2, 3)) > 0)  # every class wins pixels somewhere
    _, empty = masks_to_boxes(labels)
    assert torch.all((~empty).any(0))  # and gets a box in some image


def test_one_class_pass_two_is_sam_predictors_box_output(official_vit_test):
    """Pass 2 equals `SamPredictor.predict(box=..., multimask_output=False)` of the official 4-token SAM on the
    same embedding: with one class the decoder keeps SAM's four tokens and class 1 is token 0."""
    net = _net(official_vit_test, 1, in_channels=3)
    official = build_sam("vit_test", 64, num_classes=1)
    official.load_state_dict(torch.load(official_vit_test, weights_only=True))
    image = (torch.rand(64, 64, 3) * 255).to(torch.uint8)
    with torch.no_grad():
        embedding = net.sam.image_encoder(net.preprocess(image.permute(2, 0, 1)[None] / 255.0))
        predictor = SamPredictor(official.eval())
        predictor.set_image(image.numpy())
        torch.testing.assert_close(predictor.features, embedding, rtol=1e-4, atol=1e-4)
        predictor.features = embedding
        previous = torch.full((1, 1, 16, 16), -5.0)
        previous[..., 3:9, 5:12] = 5.0
        (box,), _ = masks_to_boxes(net.labels(previous)[0], scale=4)
        refined = net.decode(embedding, previous)
        _, _, low_res = predictor.predict(box=box.numpy(), multimask_output=False, return_logits=True)
    assert box.tolist() == [20.0, 12.0, 47.0, 35.0]
    np.testing.assert_allclose(refined[0].numpy(), low_res, rtol=1e-5, atol=1e-5)
