"""A self-contained serving bundle for a trained model: configs that need no overrides (MONAI Label applies none).

MONAI Label reads `configs/inference.json` and `configs/train.json` of a bundle alone. A model trained with an
override stack (`train.json` + `demo.json`, `--sam_variant vit_l`, ...) is served by writing those stacks out
merged, with the network's construction arguments and the settings that change pixels taken from the model's record
(the model.json `BestModelSaver` writes beside model.pt), so `network_def` and the preprocessing match the weights
whatever the user typed. The generated configs:

- inference: load only `image` (MONAI Label's `LoadImaged` wrapper ignores `allow_missing_keys`), build the
  network without the base SAM checkpoint (model.pt holds every weight) and with `train_output="final"`
  (MONAI Label's epistemic scoring runs the network in train mode and expects one tensor), with the in-memory
  embedding cache (`embedding_cache: memory`, bounded, dropped when the served model changes) and the encoder
  runtime of inference.json (its export built beside the served model.pt on the first request);
- training (each MONAI Label `/train` request): a fresh run that starts from the served weights, validates
  them first and replaces them only with a better model, keeping the replaced one as `model.prev.pt`;
- metadata: label names from `class_names`, and the input dimension MONAI Label reports (3 for volumes
  segmented slice by slice, 2 for 2D images).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from ..atomic import atomic_write_text
from ..errors import SAMSPError
from ..model.embedding_cache import MEMORY
from ..training.checkpoints import BestModelSaver

DATASET_DIR = "$@bundle_root + '/data'"


def merged_config(files: Sequence[str | Path], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The raw (unresolved) content of a config stack with `--key value` overrides applied, as one dict."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(dict(overrides))
    return copy.deepcopy(parser.config)


def apply_recorded_settings(config: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """Set each recorded setting (model.json `settings`: modality, slice axis, class names, ...) that the config
    defines; `ct_window`, recorded as null for a modality other than CT, keeps the config's value."""
    for key, value in settings.items():
        if key in config and not (key == "ct_window" and value is None):
            config[key] = value


def apply_network_args(config: dict[str, Any], args: Mapping[str, Any]) -> None:
    """Set each construction argument where `network_def` takes it from: the top-level key it references
    (so `image_size` also sizes the training crops) or, for a literal, `network_def` itself."""
    network_def = config["network_def"]
    for name, value in args.items():
        ref = network_def.get(name)
        if isinstance(ref, str) and ref.startswith("@") and "#" not in ref and ref[1:] in config:
            config[ref[1:]] = value
        else:
            network_def[name] = value
    checkpoint_ref = network_def.get("checkpoint")
    if isinstance(checkpoint_ref, str) and checkpoint_ref.startswith("@"):
        config[checkpoint_ref[1:]] = None
    network_def["checkpoint"] = None


LOADERS = ("LoadImaged", "load_images_and_segs")  # the bundle's loaders (the latter returns a LoadImaged)


def image_only_loading(config: dict[str, Any]) -> None:
    """Inference loads `image` alone: drop `label` from every loader of `load_transforms`."""
    kept = []
    for transform in config["load_transforms"]:
        if isinstance(transform, dict) and str(transform.get("_target_", "")).endswith(LOADERS):
            keys = [transform["keys"]] if isinstance(transform["keys"], str) else list(transform["keys"])
            keys = [k for k in keys if k != "label"]
            if not keys:
                continue
            transform["keys"] = keys
        kept.append(transform)
    config["load_transforms"] = kept


def inference_config(
    files: Sequence[str | Path],
    overrides: Mapping[str, Any],
    args: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
) -> dict:
    config = merged_config(files, overrides)
    apply_recorded_settings(config, settings or {})
    apply_network_args(config, args)
    config["network_def"]["train_output"] = "final"
    config["network_def"]["dropout"] = 0.0
    if "embedding_cache" in config:  # a repeated /infer and the scoring of the same image reuse the embeddings
        config["embedding_cache"] = MEMORY
    config["dataset_dir"] = DATASET_DIR
    image_only_loading(config)
    return config


def train_config(
    files: Sequence[str | Path],
    overrides: Mapping[str, Any],
    args: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
) -> dict:
    config = merged_config(files, overrides)
    apply_recorded_settings(config, settings or {})
    apply_network_args(config, args)
    config["dataset_dir"] = DATASET_DIR
    config["validate"]["best_model"]["keep_previous"] = True
    # out of models/: MONAI Label offers every models/*.pt as a model to infer with
    config["training_state_path"] = "$@bundle_root + '/train_state/training_state.pt'"
    # Each request is a new run from the served weights. The previous request's state is of no use (the served
    # model and model.prev.pt hold the weights), so it is deleted: `fresh` would move one aside per request.
    config["fresh"] = False
    config["initialize"] = ["$pathlib.Path(@training_state_path).unlink(missing_ok=True)", *config["initialize"]]
    config["imports"] = [*config.get("imports", []), "$import pathlib"]
    first_steps = ["$@validate#best_model.attach_baseline(@train#trainer, @validate#evaluator)"]
    config["training"] = [*first_steps, *config["training"], TRAIN_STATS_STEP]
    return config


TRAIN_STATS_STEP = (
    "$samsp_monai.serving.serving_bundle.write_train_stats(@ckpt_dir, @train#trainer, @validate#best_model)"
)


def write_train_stats(ckpt_dir: str | Path, trainer: Any, best_model: BestModelSaver) -> dict[str, Any]:
    """What the last training request did, in `<ckpt_dir>/train_stats.json` (the app's trainer reports it)."""
    stats = {
        "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration,
        "best_metric": best_model.best_metric,
        "best_epoch": best_model.best_epoch,
        "replaced_served_model": best_model.best_epoch > 0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(Path(ckpt_dir) / "train_stats.json", json.dumps(stats, indent=2))
    return stats


def segments_volumes(inference: Mapping[str, Any]) -> bool:
    """Whether an (unresolved) inference config segments volumes slice by slice (its inferer) rather than 2D images."""
    return "SliceInferer" in str(inference["inferer"].get("_target_", ""))


def serving_metadata(metadata: Mapping[str, Any], inference: Mapping[str, Any]) -> dict[str, Any]:
    """metadata.json as MONAI Label reads it: label names from `class_names`, dimension from the inferer."""
    metadata = copy.deepcopy(dict(metadata))
    class_names = inference.get("class_names")
    if not isinstance(class_names, dict):
        raise SAMSPError("inference config: `class_names` must be a dict such as {'1': 'anterior', '2': 'posterior'}")
    shape = ["*", "*", "*"] if segments_volumes(inference) else ["*", "*"]
    formats = metadata["network_data_format"]
    formats["inputs"]["image"]["spatial_shape"] = shape
    pred = formats["outputs"]["pred"]
    pred["spatial_shape"] = shape
    pred["channel_def"] = {"0": "background", **{str(k): v for k, v in class_names.items()}}
    pred["num_channels"] = len(pred["channel_def"])
    return metadata


def check_loads(inference: Mapping[str, Any], bundle_root: Path, state_dict: Mapping[str, Any]) -> None:
    """Build the generated `network_def` and load the weights strictly: a mismatch fails here, not in the server
    (MONAI Label loads with strict=False and would serve a half-random network with a warning)."""
    parser = ConfigParser(copy.deepcopy(dict(inference)))
    parser["bundle_root"] = str(bundle_root)
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise SAMSPError(
            f"the trained weights do not fit the network the configs describe ({e}). Pass the config files and "
            "overrides the model was trained with (a model.pt with its model.json needs none of the network ones)"
        ) from e


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4) + "\n")
