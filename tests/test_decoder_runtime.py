"""The exported decoder passes against eager PyTorch on real slices, and where they are (not) used."""

from __future__ import annotations

import shutil

import nibabel as nib
import pytest
import torch
from conftest import shared_data, small_samsp

from samsp_monai import SAMSP
from samsp_monai.errors import SAMSPError
from samsp_monai.model.decoder_runtime import DecoderRuntime
from samsp_monai.model.lite_medsam import lite_medsam_checkpoint

PASSES = ("prompt_free_pass", "box_pass")


def decoder_exports(folder) -> list[str]:
    return sorted(p.name.split("-")[0] for part in PASSES for p in folder.glob(f"{part}-*.onnx"))


def hippocampus_slices(count: int) -> torch.Tensor:
    """(count, 1, H, W) middle axial slices of a real MR volume, min-max scaled to [0, 1]."""
    volume = torch.from_numpy(nib.load(shared_data("msd-hippocampus") / "imagesTr/hippocampus_001.nii.gz").get_fdata())
    middle = volume.shape[2] // 2
    slices = volume[..., middle - count // 2 : middle - count // 2 + count].permute(2, 0, 1)[:, None].float()
    return (slices - slices.min()) / (slices.max() - slices.min())


def test_the_exported_decoder_passes_give_eagers_logits_for_any_number_of_rows(tmp_path):
    """Two classes on LiteMedSAM's pretrained decoder: pass 1 over 3 slices, then box passes of 3 rows and of 1
    row (what skipping the empty (slice, class) pairs leaves), each within 1e-4 of eager's largest logit."""
    eager = SAMSP("lite_medsam", 256, 2, 1, lite_medsam_checkpoint(), "frozen", geometry="sam").eval()
    fast = SAMSP("lite_medsam", 256, 2, 1, None, "frozen", geometry="sam", runtime="openvino", model_dir=tmp_path)
    fast.load_state_dict(eager.state_dict())
    fast.eval()
    x = hippocampus_slices(3)
    boxes = torch.tensor([[40.0, 60.0, 120.0, 150.0], [130.0, 70.0, 200.0, 160.0]]).expand(3, 2, 4)
    with torch.no_grad():
        embeddings = eager.encode(eager.preprocess(x))
        results = [(eager.decode(embeddings), fast.decode(embeddings))]
        previous = results[0][0]
        for empty in ([[False, True], [False, False], [True, True]], [[True, True], [False, True], [True, True]]):
            empty = torch.tensor(empty)
            results.append(tuple(net.decode_boxes(embeddings, boxes, previous, empty) for net in (eager, fast)))
    for reference, exported in results:
        assert (exported - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert decoder_exports(tmp_path) == ["box_pass", "prompt_free_pass"]


def test_training_keeps_the_decoder_eager_and_a_changed_decoder_gets_new_exports(tmp_path):
    """No export while a gradient reaches the decoder or without a model folder (training); a served model whose
    decoder weights change gets new exports, the old ones deleted, and a copied one is refused."""
    x = torch.rand(2, 1, 64, 64)
    training = small_samsp(encoder_training="frozen", runtime="openvino")
    served = small_samsp(encoder_training="frozen", runtime="openvino", model_dir=tmp_path)
    training.load_state_dict(served.state_dict())
    served(x).final.sum().backward()  # train mode, a gradient reaches the decoder
    assert decoder_exports(tmp_path) == []
    with torch.no_grad():
        assert torch.allclose(served.eval()(x), training.eval()(x), atol=1e-4)
        old = sorted(tmp_path.glob("box_pass-*.onnx"))
        served.sam.mask_decoder.iou_token.weight.add_(0.5)
        served(x)
    new = sorted(tmp_path.glob("box_pass-*.onnx"))
    assert len(old) == len(new) == 1 and old != new and not old[0].exists()
    assert decoder_exports(tmp_path) == ["box_pass", "prompt_free_pass"]

    def first_weights(folder):
        net = small_samsp(encoder_training="frozen", runtime="openvino", model_dir=folder).eval()
        net.load_state_dict(training.state_dict())
        return net

    with torch.no_grad():
        first_weights(tmp_path / "b")(x)
    (own,) = (tmp_path / "b").glob("box_pass-*.onnx")
    shutil.copy(new[0], own)  # the changed model's export under the first weights' name
    with pytest.raises(SAMSPError, match="box_pass key"), torch.no_grad():
        first_weights(tmp_path / "b")(x)


def test_the_same_decoder_weights_at_another_image_size_get_their_own_export(tmp_path):
    """SAM's prompt encoder has the same weights at every image size, but an export holds one embedding size: the
    export key includes the input sizes, so a 32 px model beside a 64 px one with the same decoder never reads the
    other's export (it did: "model input [?,32,16,16] and the tensor (1.32.8.8) are incompatible")."""
    large = small_samsp(encoder_training="frozen", runtime="openvino", model_dir=tmp_path).eval()
    small = small_samsp(img_size=32, encoder_training="frozen", runtime="openvino", model_dir=tmp_path).eval()
    for part in ("prompt_encoder", "mask_decoder"):
        getattr(small.sam, part).load_state_dict(getattr(large.sam, part).state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        large(torch.rand(1, 1, 64, 64))
        served = small(x)
        small.decoder_runtime = DecoderRuntime("torch")
        assert torch.allclose(served, small(x), atol=1e-4)
