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
from ..model.sam_factory import PATCH_SIZE, SAM_VARIANTS

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

    return check


def number(minimum: float = -math.inf, maximum: float = math.inf, above_minimum: bool = False) -> Check:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _refuse(key, f"must be a finite number, got {value!r}", f"write e.g. --{key} 0.001")
        if value < minimum or value > maximum or (above_minimum and value == minimum):
            low = f"> {minimum}" if above_minimum else f">= {minimum}"
            bounds = low if maximum == math.inf else f"{low} and <= {maximum}"
            raise _refuse(key, f"must be {bounds}, got {value}", "choose a value in that range")

    return check


def one_of(*choices: Any) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _refuse(
                key, f"must be one of {list(choices)}, got {value!r}", f"{hint}write e.g. --{key} {choices[0]}"
            )

    return check


def optional(check: Check) -> Check:
    return lambda key, value: None if value is None else check(key, value)


def numbers(length: int, check: Check, increasing: bool = False) -> Check:
    def check_all(key: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise _refuse(key, f"must be a list of {length} numbers, got {value!r}", f'write e.g. --{key} "[...]"')
        for item in value:
            check(key, item)
        if increasing and list(value) != sorted(set(value)):
            raise _refuse(key, f"must be increasing, got {value!r}", "give the lower bound first")

    return check_all


def names(key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise _refuse(key, f"must be a non-empty list of names, got {value!r}", f"write e.g. --{key} \"['qkv']\"")


positive = integer(minimum=1)
SCHEMA: dict[str, Check] = {
    "fresh": boolean,
    "self_prompt": boolean,
    "distill": boolean,
    "detach_teacher": boolean,
    "encoder_checkpointing": boolean,
    "sam_variant": one_of(*SAM_VARIANTS),
    "encoder_training": one_of("lora", "full", "frozen"),
    "empty_box": one_of("keep_previous", "full_image"),
    "empty_box_train": one_of("keep_previous", "full_image"),
    "geometry": one_of("stretch", "sam"),
    "lora_layout": one_of("qkv", "q_v"),
    "kl": one_of("forward", "reverse"),
    "modality": lambda key, value: one_of("MR", "CT", "RGB")(key, value.upper() if isinstance(value, str) else value),
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
    "cache_rate": number(0.0, 1.0),
    "spacing": optional(numbers(3, number(0.0, above_minimum=True))),
    "ct_window": numbers(2, number(), increasing=True),
}


def check_values(settings: Mapping[str, Any]) -> None:
    """Every key of `settings` that `SCHEMA` knows has a value of its type and range."""
    for key, value in settings.items():
        if key in SCHEMA:
            SCHEMA[key](key, value)


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
