"""The UNet baseline behind SAMSP's interface: any input size in, class logits of that size out."""

import pytest
import torch

from samsp_monai.unet import ResizingUNet


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 37, 53)])
def test_logits_have_the_input_size_and_one_channel_per_class_plus_background(shape):
    net = ResizingUNet(img_size=32, num_classes=2, in_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], 3, *shape[2:]) and torch.isfinite(out).all()


def test_input_size_must_survive_the_strides():
    with pytest.raises(ValueError, match="multiple of 16"):
        ResizingUNet(img_size=40)
