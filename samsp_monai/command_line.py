"""The `python -m monai.bundle run ...` command line as MONAI's runner reads it, for checks and defaults that
depend on what the user typed (the config files, the override keys)."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def literal(text: str) -> Any:
    """A value as python-fire reads it: a Python literal where it parses as one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def key_value_overrides(args: Sequence[str]) -> dict[str, Any]:
    """A script's `--key value` overrides (as `python -m monai.bundle` takes them) as {key: value}; a ValueError
    names the arguments when they are not such pairs."""
    if len(args) % 2 or not all(key.startswith("--") for key in args[::2]):
        raise ValueError(f"overrides must be --key value pairs, got {list(args)}")
    return {key[2:]: literal(value) for key, value in zip(args[::2], args[1::2], strict=True)}


def is_bundle_command(argv: Sequence[str]) -> bool:
    """True when `argv` is that of `python -m monai.bundle` (also under torchrun)."""
    return bool(argv) and Path(argv[0]).parent.name == "bundle" and Path(argv[0]).name == "__main__.py"


def command_line_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(config files, top-level override keys) of a `python -m monai.bundle run ...` command line.

    MONAI's runner (python-fire) takes `--key value` and `--key=value`; `--args_file` adds the keys of that file.
    """
    files: list[str] = []
    keys: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, _, inline = arg[2:].partition("=")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
        if key == "config_file":
            parsed = literal(value)
            files += [str(f) for f in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
        elif key == "args_file":
            args_content = json.loads(Path(value).read_text()) if value.endswith(".json") else {}
            keys += [k for k in args_content if k != "config_file"]
            config = args_content.get("config_file", [])
            files += [str(f) for f in (config if isinstance(config, list) else [config])]
        else:
            keys.append(key.replace("-", "_"))
    return files, keys
