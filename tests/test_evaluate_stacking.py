"""evaluate.json stacked on train.json, as model-zoo bundles document it, gives the same evaluation as on
inference.json; the add-on configs stack on a base config in any order; a failed run leaves no output record."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow

CONFIGS = REPO / "bundle/configs"
SMALL = {"sam_variant": "vit_test", "image_size": 64, "num_workers": 0}
FROM_INFERENCE = [
    "imports", "ckpt_path", "overwrite", "saver", "dataloader", "evaluator", "initialize", "postprocessing",
]  # fmt: skip
# (`run` is not among them: its end line also names the metric files)
# The task's defaults that add-ons change: in both base configs, never in evaluate.json (an add-on's value must
# win whether it comes before or after evaluate.json).
TASK_KEYS = ["imports", "class_names", "output_ext", "output_dtype", "output_scale", "extra_savers"]
BASES = ["train.json", "inference.json"]
ADDONS = sorted(
    p.name
    for p in CONFIGS.glob("*.json")
    if p.name not in [*BASES, "multi_gpu_train.json"] and not p.name.startswith("metadata")
)


def test_evaluate_json_copies_of_inference_keys_are_unchanged():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    for key in FROM_INFERENCE:
        assert evaluate[key] == inference[key], key


def test_train_json_holds_the_task_keys_of_inference_json():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    assert {k: train[k] for k in TASK_KEYS} == {k: inference[k] for k in TASK_KEYS}


def test_no_two_add_ons_set_one_key_to_different_values_except_alternative_tasks():
    """So their order on top of a base config does not matter. Alternatives, of which one picks one, may differ:
    the data (demo or polyp_paper), the training recipe (demo, paper or scratch), the network (paper's SAM-SP or
    unet)."""
    alternatives = [
        {"demo.json", "polyp_paper.json"},
        {"demo.json", "paper.json", "scratch.json"},
        {"paper.json", "unet.json"},
    ]
    configs = {name: json.loads((CONFIGS / name).read_text()) for name in ADDONS}
    clashes = [
        (a, b, k)
        for a, b in itertools.combinations(ADDONS, 2)
        if not any({a, b} <= group for group in alternatives)
        for k in configs[a].keys() & configs[b].keys()
        if configs[a][k] != configs[b][k]
    ]
    assert clashes == []


@pytest.mark.parametrize(
    ("base", "addon"),
    [  # paper.json sets keys inside train.json's optimizer: it stacks on train.json only
        (base, addon)
        for base in BASES
        for addon in ADDONS
        if addon != "evaluate.json" and (base, addon) != ("inference.json", "paper.json")
    ],
)
def test_evaluate_json_and_an_add_on_merge_the_same_in_either_order(base, addon):
    merged = []
    for order in ([addon, "evaluate.json"], ["evaluate.json", addon]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / name) for name in (base, *order)])
        merged.append(parser.get())
    assert merged[0] == merged[1]


def test_evaluate_after_demo_evaluates_the_demo_data_and_a_failed_stack_leaves_no_record(tmp_path):
    """`[train, demo, evaluate]` failed (evaluate.json redefined dataset_dir) and left samsp_outputs.json behind."""
    configs = [str(CONFIGS / name) for name in ("train.json", "demo.json", "evaluate.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(SMALL)
    (tmp_path / "models").mkdir()
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, tmp_path / "models/model.pt")
    here = {"bundle_root": str(tmp_path), "demo_data_dir": str(tmp_path / "demo_data")}
    broken = ConfigWorkflow(config_file=configs, workflow_type=None, **here, **SMALL)
    broken.parser["dataset_dir"] = str(tmp_path / "no_such_data")
    broken.initialize()
    with pytest.raises(Exception) as failure:  # noqa: PT011 (MONAI wraps the cause in its expression error)
        broken.run()
    assert "no_such_data/datalist.json" in str(failure.getrepr(chain=True))
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())
    wf = ConfigWorkflow(config_file=configs, workflow_type=None, **here, **SMALL)
    wf.initialize()
    wf.run()
    wf.finalize()
    summary = json.loads((tmp_path / "eval/metrics_summary.json").read_text())
    validation = json.loads((tmp_path / "demo_data/datalist.json").read_text())["validation"]
    assert summary["classes"]["1"]["n_evaluated"] == len(validation) > 0
    assert len(list((tmp_path / "eval").glob("demo_*_seg.nii.gz"))) == len(validation)
    assert json.loads((tmp_path / "eval/samsp_outputs.json").read_text())["model"] == str(tmp_path / "models/model.pt")


def _evaluate(base: str, bundle_root, datalist) -> dict:
    configs = [str(CONFIGS / base), str(CONFIGS / "evaluate.json")]
    overrides = SMALL | {"dataset_dir": str(shared_data("msd-hippocampus")), "datalist_file": str(datalist)}
    wf = ConfigWorkflow(config_file=configs, workflow_type=None, bundle_root=str(bundle_root), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((bundle_root / "eval/metrics_summary.json").read_text())


def test_evaluate_on_train_json_equals_evaluate_on_inference_json(tmp_path):
    cases = ["hippocampus_001", "hippocampus_003"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps({"validation": [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in cases]})
    )
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(SMALL)
    state = {"model": parser.get_parsed_content("network_def").state_dict()}
    summaries = []
    for base in ("inference.json", "train.json"):
        root = tmp_path / base.split(".")[0]
        (root / "models").mkdir(parents=True)
        torch.save(state, root / "models/model.pt")
        summaries.append(_evaluate(base, root, datalist))
    assert summaries[0]["overall"] == summaries[1]["overall"]
    assert summaries[1]["overall"]["dice"] >= 0.0
