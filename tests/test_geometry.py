"""SAM's own geometry (longest-side resize, padding, two-step upsampling) against segment_anything itself."""

import pytest
import torch
import torch.nn.functional as F
from conftest import small_samsp
from segment_anything.utils.transforms import ResizeLongestSide

from samsp_monai import build_sam
from samsp_monai.data.transforms import ToModelFramed
from samsp_monai.model.geometry import content_shape, from_model_frame, to_model_frame


def test_sam_frame_is_segment_anythings_resize_placed_top_left_and_padded():
    """Compared with `ResizeLongestSide.apply_image`, the path `SamPredictor.set_image` takes (PIL on uint8,
    hence up to one grey level apart); its `apply_image_torch` reads the size from the batch and channel
    dimensions of a BCHW tensor, so it cannot serve as the reference."""
    image = (torch.rand(90, 180, 3) * 255).to(torch.uint8)
    expected = torch.from_numpy(ResizeLongestSide(64).apply_image(image.numpy())).permute(2, 0, 1).float()
    framed = to_model_frame(image.permute(2, 0, 1)[None].float(), 64, "sam")[0]
    assert framed.shape == (3, 64, 64) and content_shape((90, 180), 64, "sam") == (32, 64) == expected.shape[1:]
    assert (framed[:, :32] - expected).abs().max() <= 1.0
    assert torch.all(framed[:, 32:] == 0)


def test_sam_upsampling_is_segment_anythings_postprocess_masks():
    low_res = torch.randn(2, 3, 16, 16)
    expected = build_sam("vit_test", 64).postprocess_masks(low_res, input_size=(32, 64), original_size=(90, 180))
    torch.testing.assert_close(from_model_frame(low_res, (90, 180), 64, "sam"), expected)


@pytest.mark.parametrize("geometry", ["sam", "stretch"])
def test_a_mask_round_trips_to_its_own_size_and_place(geometry):
    mask = torch.zeros(1, 1, 60, 120)
    mask[..., 30:54, 60:110] = 1.0  # bottom right: padding sits below it in the SAM frame
    framed = to_model_frame(mask, 64, geometry)
    low_res = F.avg_pool2d(framed, 4) * 20 - 10  # what a perfect model would predict at mask resolution
    back = from_model_frame(low_res, (60, 120), 64, geometry) > 0
    assert back.shape == mask.shape
    iou = (back & (mask > 0)).sum() / (back | (mask > 0)).sum()
    assert iou > 0.9  # one mask pixel is 7.5 image pixels here
    rows, cols = back[0, 0].any(1).nonzero(), back[0, 0].any(0).nonzero()
    assert abs(int(rows.min()) - 30) <= 2 and abs(int(rows.max()) - 53) <= 2
    assert abs(int(cols.min()) - 60) <= 2 and abs(int(cols.max()) - 109) <= 2


def test_training_transform_frames_slices_exactly_as_the_network_does():
    net = small_samsp(geometry="sam", num_classes=2).eval()
    image, label = torch.rand(1, 35, 51), torch.zeros(1, 35, 51)
    label[:, 20:30, 5:15] = 2
    sample = ToModelFramed(["image", "label"], 64, "sam")({"image": image, "label": label})
    assert sample["image"].shape == sample["label"].shape == (1, 64, 64)
    assert set(sample["label"].unique().tolist()) == {0.0, 2.0} and torch.all(sample["label"][:, 44:, :] == 0)
    torch.testing.assert_close(net.preprocess(sample["image"][None]), net.preprocess(image[None]))


def test_network_with_sam_geometry_returns_logits_of_the_input_size():
    net = small_samsp(geometry="sam", num_classes=2)
    x = torch.rand(2, 1, 35, 51)
    out = net.train()(x)
    assert out.final.shape == out.first.shape == (2, 3, 35, 51)
    assert net.eval()(x).shape == (2, 3, 35, 51)
    with pytest.raises(ValueError, match="geometry"):
        small_samsp(geometry="letterbox")
