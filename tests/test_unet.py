"""The UNet baseline behind SAMSP's interface: any input size in, class logits of that size out."""

import pytest
import torch
from ignite.engine import Engine

from samsp_monai.model.unet import ResizingUNet
from samsp_monai.training.prompt_stats import EmptyPromptShare


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 37, 53)])
def test_logits_have_the_input_size_and_one_channel_per_class_plus_background(shape):
    net = ResizingUNet(img_size=32, num_classes=2, in_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], 3, *shape[2:]) and torch.isfinite(out).all()


def test_input_size_must_survive_the_strides():
    with pytest.raises(ValueError, match="multiple of 16"):
        ResizingUNet(img_size=40)


def test_train_json_empty_prompt_statistics_leave_a_unet_alone():
    """train.json's EmptyPromptShare handler stays in the chain when network_def is swapped for the UNet."""
    net = ResizingUNet(img_size=32, channels=(4, 8, 16), strides=(2, 2))
    engine = Engine(lambda e, b: net(torch.rand(1, 3, 32, 32)))
    EmptyPromptShare(net).attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert "train_empty_y0_share" not in engine.state.metrics
