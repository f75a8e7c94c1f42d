"""Settings checked before any heavy work: each key has its type and range, and no override key is unknown.

`python -m monai.bundle run ... --key value` reads values as Python literals, so `--self_prompt false` arrives as
the *text* 'false', which is truthy; and an override of a key the config does not define (`--lerning_rate 0.5`)
is added as a new key that nothing reads. Both used to pass without a word. The bundle's `initialize` calls
`check_settings(@settings)`: a wrong value or an unknown key stops the run with one `SAMSPError` naming the key,
what is wrong and what to write instead. Booleans must be written `True`/`False`: the texts 'true'/'false' are
refused rather than guessed, so every boolean means one thing on the command line, in JSON and in Python.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..command_line import command_line_overrides, is_bundle_command
from ..errors import SAMSPError
from ..model.sam_factory import PATCH_SIZE, VARIANTS

Check = Callable[[str, Any], None]

# top-level keys MONAI itself adds or reads: `run`'s own arguments and the `--tracking mlflow` settings
MONAI_KEYS = frozenset(
    {
        *("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"),
        *("experiment_name", "run_name", "tracking_uri", "output_dir", "save_execute_config", "_meta_"),
        *("handlers_id", "configs", "trainer", "validator", "evaluator", "workflow_type", "properties_path"),
    }
)


def _refuse(key: str, problem: str, fix: str) -> SAMSPError:
    return SAMSPError(f"setting '{key}': {problem}; {fix}")


def ruled(check: Check, rule: str) -> Check:
    """`check` with `check.rule`, the allowed values in words, for the generated config reference."""
    check.rule = rule  # type: ignore[attr-defined]
    return check


def rule_of(check: Check) -> str:
    return getattr(check, "rule", "")


def boolean(key: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, str) and value.lower() in ("true", "false"):
        word = value.lower().capitalize()
        raise _refuse(
            key,
            f"got the text {value!r}, which would count as true",
            f"write --{key} {word} (capital {word[0]}): the command line reads Python literals",
        )
    raise _refuse(key, f"must be True or False, got {value!r}", f"write --{key} True or --{key} False")


def integer(minimum: int | None = None, maximum: int | None = None, multiple_of: int = 1) -> Check:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(key, f"must be a whole number, got {value!r}", f"write e.g. --{key} {minimum or 1}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise _refuse(key, f"must be {bounds}, got {value}", "choose a value in that range")
        if value % multiple_of:
            raise _refuse(
                key,
                f"must be a multiple of {multiple_of}, got {value}",
                f"e.g. {max(1, value // multiple_of) * multiple_of}",
            )

    bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}" if minimum is not None else "any"
    return ruled(check, f"whole number {bounds}" + (f", multiple of {multiple_of}" if multiple_of > 1 else ""))


def number(minimum: float = -math.inf, maximum: float = math.inf, above_minimum: bool = False) -> Check:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _refuse(key, f"must be a finite number, got {value!r}", f"write e.g. --{key} 0.001")
        if value < minimum or value > maximum or (above_minimum and value == minimum):
            low = f"> {minimum}" if above_minimum else f">= {minimum}"
            bounds = low if maximum == math.inf else f"{low} and <= {maximum}"
            raise _refuse(key, f"must be {bounds}, got {value}", "choose a value in that range")

    low = "" if minimum == -math.inf else f"> {minimum:g}" if above_minimum else f">= {minimum:g}"
    high = "" if maximum == math.inf else f"<= {maximum:g}"
    return ruled(check, " ".join(["number", " and ".join(b for b in (low, high) if b)]).strip())


def one_of(*choices: Any) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _refuse(
                key, f"must be one of {list(choices)}, got {value!r}", f"{hint}write e.g. --{key} {choices[0]}"
            )

    return ruled(check, "one of " + ", ".join(f"`{c}`" for c in choices))


def optional(check: Check) -> Check:
    return ruled(lambda key, value: None if value is None else check(key, value), f"{rule_of(check)}, or None")


def numbers(length: int, check: Check, increasing: bool = False) -> Check:
    def check_all(key: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise _refuse(key, f"must be a list of {length} numbers, got {value!r}", f'write e.g. --{key} "[...]"')
        for item in value:
            check(key, item)
        if increasing and list(value) != sorted(set(value)):
            raise _refuse(key, f"must be increasing, got {value!r}", "give the lower bound first")

    item = rule_of(check).removeprefix("number").strip()
    return ruled(
        check_all, f"list of {length} numbers" + (f" ({item})" if item else "") + (", increasing" * increasing)
    )


def names(key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise _refuse(key, f"must be a non-empty list of names, got {value!r}", f"write e.g. --{key} \"['qkv']\"")


ruled(boolean, "`True` or `False`")
ruled(names, "non-empty list of names")
positive = integer(minimum=1)
SCHEMA: dict[str, Check] = {
    "fresh": boolean,
    "self_prompt": boolean,
    "distill": boolean,
    "detach_teacher": boolean,
    "encoder_checkpointing": boolean,
    "sam_variant": one_of(*VARIANTS),
    "encoder_training": one_of("lora", "full", "frozen"),
    "empty_box": one_of("keep_previous", "full_image"),
    "empty_box_train": one_of("keep_previous", "full_image"),
    "geometry": one_of("stretch", "sam"),
    "lora_layout": one_of("qkv", "q_v"),
    "kl": one_of("forward", "reverse"),
    "modality": ruled(
        lambda key, value: one_of("MR", "CT", "RGB")(key, value.upper() if isinstance(value, str) else value),
        "one of `MR`, `CT`, `RGB` (any case)",
    ),
    "in_channels": one_of(1, 3),
    "slice_axis": one_of(0, 1, 2),
    "image_size": integer(minimum=PATCH_SIZE, multiple_of=PATCH_SIZE),
    "num_classes": positive,
    "lora_rank": positive,
    "iterations": positive,
    "max_epochs": positive,
    "val_interval": positive,
    "batch_size": positive,
    "slices_per_volume": positive,
    "sw_batch_size": positive,
    "num_workers": integer(minimum=0),
    "seed": integer(minimum=0),
    "lora_alpha": optional(number(0.0, above_minimum=True)),
    "lora_targets": names,
    "learning_rate": number(0.0, above_minimum=True),
    "weight_decay": number(0.0),
    "distill_alpha": number(0.0),
    "temperature": number(0.0, above_minimum=True),
    "ce_weight": number(0.0),
    "dice_weight": number(0.0),
    "gt_box_prob": number(0.0, 1.0),
    "gt_box_jitter": number(0.0),
    "gt_box_anneal_epochs": integer(minimum=0),
    "fg_fraction": number(0.0, 1.0),
    "augment_prob": number(0.0, 1.0),
    "cache_rate": number(0.0, 1.0),
    "spacing": optional(numbers(3, number(0.0, above_minimum=True))),
    "ct_window": numbers(2, number(), increasing=True),
}


# What every top-level key of train.json, inference.json and evaluate.json means, by topic: the source of
# bundle/docs/config_reference.md (`python scripts/config_reference.py`), which adds each key's default and, from
# SCHEMA, its allowed values. tests/test_config_reference.py checks that no key is missing and the page is current.
MEANINGS: dict[str, dict[str, str]] = {
    "data": {
        "dataset_dir": "data root: datalist paths are relative to it; for inference, a folder of images/volumes/DICOM "
        "series folders, or one such file or series folder",
        "datalist_file": "MONAI datalist JSON (`training`/`validation` lists); write it with scripts/make_datalist.py",
        "eval_split": "which datalist list evaluation scores (`validation` or `training`)",
        "allow_overlap": "accept validation cases that are also training cases (refused by default: the best model "
        "would be chosen on data it trained on)",
        "demo_data_dir": "demo.json: where the synthetic demo data is written once (`<bundle folder>/demo_data`, "
        "shared by every bundle_root)",
        "datalist": "the cases a run reads (built from `dataset_dir`/`datalist_file`; not set by hand)",
        "modality": "intensity scaling: `CT` a fixed window, `MR` 0.5/99.5 percentiles per volume, `RGB` /255",
        "ct_window": "HU window for `modality CT`, mapped to 0..1",
        "spacing": "resample to this voxel size in mm before slicing (None: keep the data's grid)",
        "in_channels": "image channels: 1 (grey, volumes) or 3 (RGB, 2D)",
        "num_classes": "foreground label values 1..N (0 is background); the same for training, inference, evaluation",
        "class_names": "name of each class (`{'1': 'liver'}`): reports, DICOM SEG segments, MONAI Label labels",
        "slice_axis": "axis along which volumes are cut into 2D slices (2 = axial for RAS volumes)",
        "slices_per_volume": "training slices sampled per volume and step",
        "fg_fraction": "share of sampled training slices that show foreground (the rest show none)",
        "augment_prob": "probability of each random flip and intensity scaling in training (0 with an embedding "
        "cache, whose cached inputs must not change)",
        "cache_rate": "share of the data set cached in memory by CacheDataset",
        "num_workers": "data loader worker processes",
    },
    "network": {
        "sam_variant": "SAM size: `vit_b`/`vit_l`/`vit_h` (official), `vit_test`/`vit_demo` (small, random)",
        "sam_checkpoint": "official SAM weights for `sam_variant` (None: random initialisation, as the demo)",
        "image_size": "model input size in pixels (a 1024 checkpoint is adapted)",
        "geometry": "`stretch`: resize to a square; `sam`: SAM's longest-side resize and padding (keeps aspect ratio)",
        "encoder_training": "`lora` (frozen encoder + LoRA), `full` (train it all: from scratch), `frozen`",
        "lora_rank": "LoRA rank",
        "lora_alpha": "LoRA scale numerator (None: equal to the rank, scale 1)",
        "lora_targets": "Linear layers (module-path suffixes) that get LoRA adapters",
        "lora_layout": "`qkv`: one adapter on the fused q/k/v Linear; `q_v`: SAMed's separate q and v adapters",
        "encoder_checkpointing": "activation checkpointing of the encoder blocks (less GPU memory, more compute)",
        "embedding_cache": "folder keeping the image embeddings of a frozen encoder (each input encoded once; "
        "default: a cache folder when `encoder_training` is `frozen`, else None); `memory`: a bounded in-memory store "
        "shared by the process (serving; `$SAMSP_EMBEDDING_CACHE_MB`, default 2048, float32)",
        "runtime": "what computes the image embeddings where no gradient reaches the encoder, and at inference the "
        "decoder passes too: `torch` (eager), `openvino` or `onnxruntime` (ONNX exports built on first use beside "
        "model.pt, or for the encoder in a cache folder while training, named by a hash of their weights and input "
        "size; default: `openvino` on a CPU, in training only for a frozen encoder)",
        "runtime_precision": "the encoder's: `fp32`, or `bf16` with `openvino` (CPUs with AVX-512 BF16 or AMX; others "
        "run f32); the decoder passes run fp32",
        "network_def": "the network component (SAMSP, or ResizingUNet with unet.json)",
        "network": "`network_def` moved to `device`",
    },
    "method": {
        "self_prompt": "SAM-SP's second pass prompted by the box of the first (False: single pass, SAMed-style)",
        "iterations": "self-prompt passes at inference (K)",
        "empty_box": "inference: a class whose previous mask is empty keeps it (`keep_previous`) or gets the "
        "whole-image box (`full_image`)",
        "empty_box_train": "the same rule in training",
        "distill": "add the KL distillation of pass 2 into pass 1 to the loss",
        "distill_alpha": "weight of the distillation term",
        "kl": "KL direction: `forward` KL(teacher || student) or `reverse`",
        "temperature": "softmax temperature of the distillation",
        "detach_teacher": "the teacher (pass 2) learns from labels only",
        "ce_weight": "weight of cross-entropy in the supervised loss",
        "dice_weight": "weight of Dice in the supervised loss",
        "gt_box_prob": "training only: probability of prompting pass 2 with the jittered ground-truth box",
        "gt_box_jitter": "std of that box's jitter, as a fraction of the box side",
        "gt_box_anneal_epochs": "lower `gt_box_prob` linearly to 0 over this many epochs (0: constant)",
        "loss": "the loss component (SAMSPLoss)",
    },
    "training": {
        "seed": "seed of weights, sampling and augmentation",
        "learning_rate": "AdamW learning rate",
        "weight_decay": "AdamW weight decay",
        "max_epochs": "epochs of the run (a larger value continues a finished run)",
        "val_interval": "validate every this many epochs",
        "batch_size": "volumes (or 2D images) per training step",
        "sw_batch_size": "slices per network call in validation and inference",
        "amp": "mixed precision on CUDA (bf16 where supported, else fp16)",
        "amp_enabled": "`amp` resolved for the device (not set by hand)",
        "amp_kwargs": "autocast settings for the device (not set by hand)",
        "fresh": "start a new run: the previous training state and best model move to models/previous/",
        "device": "`cuda:0` when there is a GPU, else CPU",
        "optimizer": "AdamW on the trainable parameters",
        "lr_scheduler": "cosine schedule over `max_epochs` (paper.json: warmup + poly)",
        "input_check": "reads every case through the load chain before training and lists all bad ones",
        "load_transforms": "loading, checks, orientation, spacing and intensity scaling shared by every workflow",
        "sample_transforms": "training slice sampling (RandSliced)",
        "train": "training components: preprocessing, dataset, dataloader, handlers, trainer, state saver, resume",
        "validate": "validation components: dataset, dataloader, postprocessing, best-model saver, evaluator",
        "training_run": "new/resumed/fresh run decision and the training lock",
        "settings": "the settings checked before a run, recorded in the training state and logged to MLflow",
    },
    "inference and evaluation": {
        "ckpt_path": "the trained model inference and evaluation load",
        "overwrite": "replace another model's segmentations in `output_dir`",
        "num_overlays": "overlays/<case>.png for this many cases (inference default 0, evaluation 4)",
        "label_dir": "inference: folder of labels named like the inputs; overlays then show the truth and the Dice",
        "output_ext": "file type of the segmentations (`.nii.gz`; `.png` for 2D)",
        "output_dtype": "data type of the saved label maps",
        "output_scale": "scale label values to this maximum when saving (255 for 2D masks), None: class indices",
        "extra_savers": "further writers of each prediction (dicom_seg.json adds the DICOM SEG writer)",
        "preprocessing": "load transforms plus EnsureTyped",
        "dataset": "the cases, a failing one reported and skipped",
        "dataloader": "batch size 1, so one bad case does not take others with it",
        "inferer": "SliceInferer along `slice_axis`",
        "restore_geometry": "softmax, Invertd to the input's geometry, argmax",
        "saver": "writes `<name>_seg<ext>` into `output_dir`",
        "output_folder": "the output folder's guard: one writer, read-back check, the record of what was written",
        "postprocessing": "restore_geometry followed by the savers",
        "handlers": "model loading, progress lines, overlays, metrics, MLflow",
        "evaluator": "the evaluator that runs inference/evaluation case by case",
    },
    "paths, runs and tracking": {
        "bundle_root": "bundle folder: models/ and eval/ go below it",
        "ckpt_dir": "`<bundle_root>/models`",
        "output_dir": "training: MLflow and evaluation outputs; inference/evaluation: where results go",
        "best_model_path": "the best model (models/model.pt)",
        "training_state_path": "the resumable training state (models/training_state.pt)",
        "training_lock_path": "one training per bundle_root (models/training.lock)",
        "experiment_name": "MLflow experiment",
        "run_name": "MLflow run name (unique per run)",
        "tracking_uri": "MLflow store (`--tracking mlflow`): SQLite beside the outputs, or a server URL",
        "registered_model_name": "register the best model under this name in MLflow (None: do not)",
        "is_not_rank0": "True on the ranks of a multi-GPU run that log nothing",
        "tracking_params": "params logged to MLflow",
        "tracking_tags": "tags logged to MLflow",
    },
    "workflow": {
        "imports": "modules the config expressions use",
        "initialize": "checks before any work: weights, settings, data, run, outputs",
        "training": "the steps of `run training`",
        "run": "the steps of `run` (inference, evaluation) or `run training`",
        "finalize": "releases the training lock",
    },
}


def meaning_of(key: str) -> str | None:
    return next((group[key] for group in MEANINGS.values() if key in group), None)


def check_class_names(settings: Mapping[str, Any]) -> None:
    """`class_names` names each class 1..num_classes exactly once: a missing or extra name would drop a class from
    the evaluation CSV and summary, or label a class that no output channel predicts."""
    if "class_names" not in settings:
        return
    names, count = settings["class_names"], settings.get("num_classes")
    if not isinstance(names, Mapping) or not all(isinstance(v, str) and v for v in names.values()):
        raise _refuse(
            "class_names",
            f"must map class numbers to names, got {names!r}",
            "write e.g. --class_names \"{'1': 'liver'}\"",
        )
    if not isinstance(count, int):
        return
    named, expected = sorted(str(k) for k in names), [str(i) for i in range(1, count + 1)]
    if sorted(set(named)) != named or set(named) != set(expected):
        raise _refuse(
            "class_names",
            f"names the classes {named}, but num_classes {count} means the classes {expected}",
            f"name each class 1..{count} once, or set --num_classes to the number of classes named",
        )


def check_values(settings: Mapping[str, Any]) -> None:
    """Every key of `settings` that `SCHEMA` knows has a value of its type and range; class names fit the count."""
    for key, value in settings.items():
        if key in SCHEMA:
            SCHEMA[key](key, value)
    check_class_names(settings)


def top_level(key: str) -> str:
    """`a` of a nested id `a#b#c` (or `a::b::c`)."""
    return str(key).replace("::", "#").split("#")[0]


def config_keys(path: str | Path) -> set[str]:
    """Top-level keys of one JSON/YAML config file."""
    from monai.bundle import ConfigParser

    content = ConfigParser.load_config_file(path)
    return {top_level(k) for k in content} if isinstance(content, Mapping) else set()


def ignored_none_values(argv: Sequence[str]) -> list[str]:
    """Keys given the value `None` on the command line: MONAI's runner drops None-valued overrides silently."""
    args = list(argv)
    pairs = [
        (a[2:].partition("=")[0], a.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else ""))
        for i, a in enumerate(args)
        if a.startswith("--")
    ]
    return [key for key, value in pairs if value == "None"]


def unknown_keys(files: Sequence[str], override_keys: Sequence[str]) -> dict[str, str | None]:
    """Keys given that the stacked bundle configs do not define: {key: closest known key or None}.

    Known: the keys of the first config file and of every stacked file in the same folder (the bundle's own
    configs: `demo.json`, `paper.json`, ... define keys of their own), plus the keys MONAI adds itself. Given: the
    command-line keys and the keys of every stacked file from elsewhere (a user's override file).
    """
    known, given = set(MONAI_KEYS), [top_level(k) for k in override_keys]
    bundle_configs = Path(files[0]).resolve().parent if files else None
    for f in files:
        keys = config_keys(f)
        if Path(f).resolve().parent == bundle_configs:
            known |= keys
        else:
            given += sorted(keys)
    return {
        k: next(iter(difflib.get_close_matches(k, known, n=1)), None) for k in dict.fromkeys(given) if k not in known
    }


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse override keys the config does not define, when run as `python -m monai.bundle` (else nothing to do)."""
    argv = sys.argv if argv is None else argv
    if not is_bundle_command(argv):
        return
    for key in ignored_none_values(argv[1:]):
        raise SAMSPError(
            f"setting '{key}': MONAI's runner ignores the value None on the command line, so the config's value "
            f"would stay; write --{key} '$None'"
        )
    files, keys = command_line_overrides(argv[1:])
    for key, close in unknown_keys(files, keys).items():
        hint = f"did you mean --{close}?" if close else "check its spelling against the config"
        raise SAMSPError(f"setting '{key}': the config does not define it, so it would be ignored; {hint}")


def check_settings(settings: Mapping[str, Any], argv: Sequence[str] | None = None) -> None:
    """The bundle's first `initialize` step: unknown override keys, then every value's type and range."""
    check_command_line(argv)
    check_values(settings)
