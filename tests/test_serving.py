"""The serving bundle for MONAI Label: model.pt carries its network, configs need no overrides, retraining keeps
the served model unless it gets better, and SAM-SP's self-consistency score."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import REPO, small_samsp
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer
from monai.transforms import LoadImaged

from samsp_monai import SAMSP, SAMSPError
from samsp_monai.model_file import load_model, save_model
from samsp_monai.serving.consistency import (
    NotScoredYet,
    both_passes,
    least_consistent_image,
    probability_disagreement,
    self_consistency,
)
from samsp_monai.serving.serving_bundle import check_loads, inference_config, serving_metadata, train_config
from samsp_monai.training.checkpoints import BestModelSaver

CONFIGS = REPO / "bundle/configs"


class _Validator(Engine):
    """A real ignite engine whose successive runs report the given validation scores; like MONAI's evaluators,
    `run()` needs no data argument."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(lambda e, batch: None)
        self.scores = scores
        self.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _report(self, engine: Engine) -> None:
        engine.state.key_metric_name = "val_mean_dice"
        engine.state.metrics = {"val_mean_dice": self.scores.pop(0)}

    def run(self, data=(0,), **kwargs):
        return super().run(data, **kwargs)


def test_best_model_carries_network_args_that_rebuild_it(tmp_path):
    network = small_samsp(num_classes=2, lora_targets=("qkv",))
    saver = BestModelSaver(tmp_path / "model.pt", network)
    engine = _Validator([0.5])
    saver.attach(engine)
    engine.run()
    args = json.loads((tmp_path / "model.json").read_text())["network_args"]
    assert args["variant"] == "vit_test" and args["num_classes"] == 2
    rebuilt = SAMSP(**args)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)


def test_a_retrained_model_replaces_the_served_one_only_when_better_and_keeps_it(tmp_path):
    path = tmp_path / "model.pt"
    served = small_samsp()
    save_model(path, served.state_dict(), served.network_args, None, {"epoch": 9, "metric_name": None})
    served_pair = path.read_bytes(), (tmp_path / "model.json").read_bytes()
    saver = BestModelSaver(path, small_samsp(), keep_previous=True)
    validator = _Validator([0.6, 0.4, 0.7, 0.8])
    saver.attach(validator)
    saver.score_baseline(validator)  # the served model scores 0.6
    assert saver.best_metric == 0.6 and (path.read_bytes(), (tmp_path / "model.json").read_bytes()) == served_pair
    validator.run()  # 0.4: worse, nothing written
    assert path.read_bytes() == served_pair[0] and not (tmp_path / "model.prev.pt").exists()
    validator.run()  # 0.7: replaces it, the served one is kept with its record (which still matches it)
    assert load_model(path).record["metric_value"] == pytest.approx(0.7)
    kept = (tmp_path / "model.prev.pt").read_bytes(), (tmp_path / "model.prev.json").read_bytes()
    assert kept == served_pair and load_model(tmp_path / "model.prev.pt").record["epoch"] == 9
    validator.run()  # 0.8: a second improvement in the same run keeps the served model, not the 0.7 one
    assert (tmp_path / "model.prev.pt").read_bytes() == served_pair[0]


def test_serving_configs_match_the_trained_network_without_overrides(tmp_path):
    trained = small_samsp(num_classes=2)
    args = trained.network_args
    files = [CONFIGS / "demo.json"]
    inference = inference_config([CONFIGS / "inference.json", *files], {}, args)
    check_loads(inference, tmp_path, trained.state_dict())
    parser = ConfigParser(inference)
    parser["bundle_root"] = str(tmp_path)
    network = parser.get_parsed_content("network_def")
    assert network.network_args | {"train_output": "pair"} == args
    loaders = [t for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, LoadImaged)]
    assert [t.keys for t in loaders] == [("image",)]
    assert inference["dataset_dir"] == "$@bundle_root + '/data'"  # not demo.json's generator

    train = train_config([CONFIGS / "train.json", *files], {}, args)
    assert train["sam_variant"] == "vit_test" and train["image_size"] == 64 and train["sam_checkpoint"] is None
    assert train["validate"]["best_model"]["keep_previous"] is True
    assert any("attach_baseline" in step for step in train["training"])

    wrong = inference_config([CONFIGS / "inference.json", *files], {}, args | {"num_classes": 1})
    with pytest.raises(SAMSPError, match="do not fit"):
        check_loads(wrong, tmp_path, trained.state_dict())


def test_serving_metadata_names_labels_and_reports_the_input_dimension():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    volume = serving_metadata(metadata, inference_config([CONFIGS / "inference.json"], {}, {}))
    image2d = serving_metadata(
        metadata, inference_config([CONFIGS / "inference.json", CONFIGS / "image2d.json"], {}, {})
    )
    assert len(volume["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 3
    assert volume["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "anterior",
        "2": "posterior",
    }
    assert len(image2d["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 2
    assert image2d["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "polyp"}
    assert image2d["network_data_format"]["outputs"]["pred"]["num_channels"] == 2


def test_probability_disagreement_is_the_mean_total_variation_distance():
    sure_a = torch.tensor([[4.0, -4.0], [-4.0, 4.0]]).T[None]  # (1, C=2, N=2): voxel 0 class 0, voxel 1 class 1
    p = torch.sigmoid(torch.tensor(8.0)).item()  # softmax of logits (4, -4): p for the larger one
    swapped = sure_a.flip(1)
    # voxel-wise TV distance between (p, 1-p) and (1-p, p) is |2p - 1|, the same at both voxels
    assert probability_disagreement(sure_a, swapped) == pytest.approx(abs(2 * p - 1))
    assert probability_disagreement(sure_a, sure_a) == 0.0
    half = torch.zeros(1, 2, 2)  # 50/50 at both voxels: distance |p - 0.5| from the sure map
    assert probability_disagreement(sure_a, half) == pytest.approx(abs(p - 0.5))


def test_self_consistency_compares_pass_one_with_the_final_pass_in_eval_mode():
    network = small_samsp(num_classes=2, dropout=0.5, train_output="final").eval()  # as served
    volume = torch.rand(1, 20, 24, 5)
    inferer = SliceInferer(roi_size=[-1, -1], spatial_dim=2, sw_batch_size=8)
    with torch.no_grad(), both_passes(network):
        final, first = network(volume[None, ..., 0])
    assert not network.training and not network.embedding_dropout.training and network.train_output == "final"
    assert network.empty_box_train == "full_image"  # restored; inside, the inference rule applied
    network.iterations = 1
    with torch.no_grad():
        assert torch.equal(network(volume[None, ..., 0]), final)  # the final pass is the served prediction
    expected = probability_disagreement(first, final)  # slice 0 alone, directly
    single = self_consistency(network, volume[..., :1], inferer)
    assert single == pytest.approx(expected)
    assert self_consistency(network, volume, inferer) == self_consistency(network, volume, inferer)  # no dropout
    network.self_prompt = False  # a single-pass model has no second pass: refused, not an IndexError
    with pytest.raises(SAMSPError, match="self_prompt False"):
        self_consistency(network, volume, inferer)


def test_dropout_samples_in_train_mode_with_one_tensor_out():
    network = small_samsp(num_classes=2, dropout=0.5, train_output="final").train()
    x = torch.rand(1, 1, 32, 32)
    outputs = [network(x) for _ in range(2)]
    assert all(isinstance(o, torch.Tensor) and o.shape == (1, 3, 32, 32) for o in outputs)
    assert not torch.equal(outputs[0], outputs[1])
    assert np.isfinite(outputs[0].detach().numpy()).all()


def test_prepare_refuses_to_overwrite_a_served_model(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_app", REPO / "scripts/prepare_monailabel_app.py")
    prepare_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_app)
    served = tmp_path / "app/model/samsp/models/model.pt"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"retrained in MONAI Label")
    with pytest.raises(SAMSPError, match="--overwrite"):
        prepare_app.prepare(tmp_path / "app", tmp_path / "model.pt", "samsp", [], {}, overwrite=False)
    assert served.read_bytes() == b"retrained in MONAI Label"
    assert prepare_app.parse_overrides(["modality=CT", "image_size=128", "spacing=[1.0, 1.0, 1.0]"]) == {
        "modality": "CT",
        "image_size": 128,
        "spacing": [1.0, 1.0, 1.0],
    }


def test_next_sample_serves_the_least_consistent_image_and_says_so_before_any_score_exists():
    scores = {"a": 0.002, "b": None, "c": 0.008}
    assert least_consistent_image(["a", "b", "c"], scores.get) == ("c", 0.008)  # unscored "b" is never preferred
    with pytest.raises(NotScoredYet, match=r"none of the 2 unlabelled images has a self-consistency score yet.*random"):
        least_consistent_image(["b", "d"], scores.get)
