"""evaluate.json stacked on train.json, as model-zoo bundles document it, gives the same evaluation as on
inference.json."""

from __future__ import annotations

import json

import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow

CONFIGS = REPO / "bundle/configs"
SMALL = {"sam_variant": "vit_test", "image_size": 64, "num_workers": 0}
FROM_INFERENCE = [
    "imports", "ckpt_path", "overwrite", "class_names", "output_ext", "output_dtype", "output_scale", "saver",
    "dataloader", "evaluator", "initialize", "run", "postprocessing",
]  # fmt: skip


def test_evaluate_json_copies_of_inference_keys_are_unchanged():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    for key in FROM_INFERENCE:
        assert evaluate[key] == inference[key], key


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
