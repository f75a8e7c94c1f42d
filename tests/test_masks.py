"""2D masks are read by their encoding (0/1, 0/255, palette, colour, JPEG) through image2d.json's load chain, or
refused naming the file; never read as empty."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, shared_data
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from samsp_monai.errors import find_user_error

CONFIGS = REPO / "bundle/configs"


def load_chain(num_classes: int = 1) -> Compose:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "image2d.json")])
    parser["num_classes"] = num_classes
    return Compose(parser.get_parsed_content("load_transforms"))


@pytest.fixture(scope="module")
def kvasir():
    """A real Kvasir-SEG image, and its JPEG mask as the reference foreground (read as the data set documents)."""
    root = shared_data("kvasir-seg")
    name = sorted((root / "masks").iterdir())[0].name
    truth = np.asarray(Image.open(root / "masks" / name).convert("L")) > 127
    return root / "images" / name, truth


def palette(truth: np.ndarray) -> Image.Image:
    image = Image.fromarray(truth.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    return image


def colour(truth: np.ndarray) -> Image.Image:
    rgb = np.zeros((*truth.shape, 3), np.uint8)
    rgb[truth] = (180, 30, 30)  # a dark red: 'L' conversion gives 73, below the old threshold of 127
    return Image.fromarray(rgb)


def rgba(truth: np.ndarray) -> Image.Image:
    array = np.zeros((*truth.shape, 4), np.uint8)
    array[..., :3] = 255  # white everywhere, but only the foreground opaque
    array[truth, 3] = 255
    return Image.fromarray(array)


ENCODINGS = {
    "zero_one.png": lambda t: Image.fromarray(t.astype(np.uint8)),
    "zero_255.png": lambda t: Image.fromarray(t.astype(np.uint8) * 255),
    "sixteen_bit.png": lambda t: Image.fromarray(t.astype(np.uint16)),
    "bilevel.png": lambda t: Image.fromarray(t),
    "palette.png": palette,
    "colour.png": colour,
    "rgba.png": rgba,
    "zero_one.jpg": lambda t: Image.fromarray(t.astype(np.uint8)),
    "colour.jpg": colour,
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_each_mask_encoding_reads_as_its_foreground(tmp_path, kvasir, name):
    image, truth = kvasir
    path = tmp_path / name
    ENCODINGS[name](truth).save(path, quality=95) if name.endswith(".jpg") else ENCODINGS[name](truth).save(path)
    label = np.asarray(load_chain()({"image": str(image), "label": str(path)})["label"])[0].T  # PIL's (W, H)
    assert set(np.unique(label)) <= {0, 1}
    agreement = (label.astype(bool) == truth).mean()
    assert agreement == 1.0 if name.endswith(".png") else agreement > 0.995, agreement


def test_a_label_map_of_two_classes_keeps_its_indices(tmp_path, kvasir):
    image, truth = kvasir
    classes = truth.astype(np.uint8)
    classes[: truth.shape[0] // 2] *= 2
    Image.fromarray(classes).save(tmp_path / "two.png")
    palette(classes).save(tmp_path / "two_palette.png")
    for name in ("two.png", "two_palette.png"):
        label = np.asarray(load_chain(num_classes=2)({"image": str(image), "label": str(tmp_path / name)})["label"])
        assert np.array_equal(label[0].T, classes)


@pytest.mark.parametrize(
    ("name", "num_classes", "message"),
    [
        ("grey_levels.png", 1, "grey values [0, 128, 255] are neither class indices 0..1 nor a 0/255 mask"),
        ("colour.png", 2, "a colour mask for 2 classes; colours carry no class order"),
        ("zero_255.jpg", 2, "a JPEG mask for 2 classes; JPEG compression changes class indices, save the masks as PNG"),
        ("palette.png", 1, "palette indices [0, 1, 3] outside 0..1"),
    ],
)
def test_a_mask_whose_encoding_cannot_be_read_is_refused_naming_it(tmp_path, kvasir, name, num_classes, message):
    image, truth = kvasir
    grey = truth.astype(np.uint8) * 255
    grey[:10] = 128
    makers = {
        "grey_levels.png": lambda: Image.fromarray(grey),
        "colour.png": lambda: colour(truth),
        "zero_255.jpg": lambda: Image.fromarray(truth.astype(np.uint8) * 255),
        "palette.png": lambda: palette(np.where(np.arange(truth.shape[1]) < 5, 3, truth).astype(np.uint8)),
    }
    path = tmp_path / name
    makers[name]().save(path)
    with pytest.raises(Exception) as raised:
        load_chain(num_classes)({"image": str(image), "label": str(path)})
    error = find_user_error(raised.value)
    assert error is not None and str(error) == f"label {path}: {message}" or message in str(error), str(error)
    assert str(path) in str(error)
