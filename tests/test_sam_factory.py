"""Official-checkpoint loading, against state dicts made by segment_anything's own builders."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import small_samsp
from segment_anything import sam_model_registry

from samsp_monai import SAMSP, CheckpointError, build_sam, load_sam_checkpoint
from samsp_monai.model.batched_decoder import BatchedMaskDecoder


@pytest.fixture(scope="module")
def official_vit_b(tmp_path_factory):
    """A random state dict in the official vit_b layout at 1024, saved like sam_vit_b_01ec64.pth."""
    torch.manual_seed(1)
    sam = sam_model_registry["vit_b"]()
    for name, p in sam.named_parameters():
        if "rel_pos" in name or "pos_embed" in name:  # zero-initialised in SAM: make resizing observable
            p.data.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def test_official_layout_loads_at_1024_with_every_weight_in_place(official_vit_b):
    sam, path = official_vit_b
    ours = build_sam("vit_b", 1024, num_classes=1)
    load_sam_checkpoint(ours, path, "vit_b")
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in sam.state_dict().items())  # one class: SAM's own


@pytest.mark.slow
def test_official_layout_at_1024_computes_what_segment_anything_computes(official_vit_b):
    """The same image embedding as segment_anything's own vit_b; slow (a vit_b forward at 1024 px on CPU)."""
    sam, path = official_vit_b
    ours = build_sam("vit_b", 1024, num_classes=1).eval()
    load_sam_checkpoint(ours, path, "vit_b")
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        torch.testing.assert_close(ours.image_encoder(x), sam.eval().image_encoder(x))


def test_batched_decoder_keeps_the_official_state_dict_layout(official_vit_b):
    sam, _ = official_vit_b
    ours = build_sam("vit_b", 1024, num_classes=1)  # one class: SAM's own 4 mask tokens
    assert isinstance(ours.mask_decoder, BatchedMaskDecoder)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sam.state_dict().items()}


def test_official_layout_loads_at_256_with_resized_positions(official_vit_b):
    sam, path = official_vit_b
    net = SAMSP("vit_b", img_size=256, num_classes=2, checkpoint=path)
    enc = net.sam.image_encoder
    expected_pos = F.interpolate(sam.image_encoder.pos_embed.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(enc.pos_embed.data, expected_pos.permute(0, 2, 3, 1))
    assert enc.blocks[2].attn.rel_pos_h.shape == (31, 64)  # global block: 2 * 16 - 1
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, sam.image_encoder.blocks[0].attn.rel_pos_h)  # windowed: kept
    assert torch.equal(enc.blocks[0].attn.qkv.base_layer.weight, sam.image_encoder.blocks[0].attn.qkv.weight)
    tokens = net.sam.mask_decoder.mask_tokens.weight
    assert torch.equal(tokens, sam.mask_decoder.mask_tokens.weight[[0, 1, 2, 3, 0]])  # class 2: a copy of token 0
    assert net.eval()(torch.rand(1, 1, 256, 256)).shape == (1, 3, 256, 256)


def test_wrong_variant_names_file_variant_and_keys(tmp_path):
    path = tmp_path / "not_vit_demo.pth"
    torch.save(build_sam("vit_test", 64).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_sam_checkpoint(build_sam("vit_demo", 64), path, "vit_demo")
    message = str(err.value)
    assert str(path) in message and "'vit_demo'" in message and "looks like vit_test" in message
    assert "image_encoder.blocks.0.attn.qkv.weight: (96, 32) in file, (288, 96) expected" in message


def test_truncated_checkpoint_is_refused_with_its_name(official_vit_b, tmp_path):
    _, path = official_vit_b
    broken = tmp_path / "sam_vit_b_01ec64.pth"
    broken.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=f"{broken}: cannot be read"):
        load_sam_checkpoint(build_sam("vit_b", 256), broken, "vit_b")


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_large_files.*demo.json"):
        small_samsp(checkpoint=tmp_path / "sam_vit_b_01ec64.pth")


def test_non_state_dict_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": build_sam("vit_test", 64).state_dict()}, path)
    with pytest.raises(CheckpointError, match="plain SAM state dict"):
        load_sam_checkpoint(build_sam("vit_test", 64), path, "vit_test")


def test_large_files_lists_the_official_checkpoints_the_bundle_expects():
    from conftest import REPO
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle/large_files.yml"))
    files = {Path(f["path"]).name: f for f in parser.get()["large_files"]}
    assert set(files) == {"sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"}
    for name, entry in files.items():
        assert entry["path"] == f"models/{name}" and entry["url"].endswith("/" + name)
        assert entry["hash_type"] == "md5" and entry["hash_val"].startswith(name.split("_")[-1][:-4])
    train = ConfigParser()
    train.read_config(str(REPO / "bundle/configs/train.json"))
    train["bundle_root"] = "ROOT"
    train["sam_variant"] = "vit_b"
    assert train.get_parsed_content("sam_checkpoint") == "ROOT/" + files["sam_vit_b_01ec64.pth"]["path"]
