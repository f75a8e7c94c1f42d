"""A trained model on disk: `model.pt`, the plain state dict MONAI's tools load, and `model.json` beside it.

MONAI's `bundle.load`, the model zoo's `ckpt_export`, `CheckpointLoader`'s defaults and MONAI Label read
`models/model.pt` as a plain state dict, so that is all it holds. What else a trained model must carry goes in
the sidecar `model.json` (same stem), which those tools never look at:

- `format`: `FORMAT`;
- `network_args`: the network's construction arguments (`SAMSP.network_args`; null for a network that records
  none, such as the UNet baseline);
- `settings`: every setting that changes what the network sees (`RECORDED_SETTINGS`), so inference and
  evaluation can refuse a config that would feed it other pixels;
- `epoch`, `metric_name`, `metric_value` (null when no validation ran);
- `model_sha256`: the SHA-256 of the model.pt it describes. model.json is written right after model.pt, each
  atomically; a model.json beside another model.pt (a copy of one file, an interrupted save) is refused.

`load_model` reads three forms: plain + model.json; a plain state dict alone (a user's own weights: the config's
settings are used unchecked, with one warning); and the old nested `{"model": ..., "network_args": ...}` file,
with one line saying how to convert it (`python scripts/convert_model.py <model.pt>`). A file that is no model
(empty, truncated, random bytes, a `training_state.pt`, SAM's own checkpoint) is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_write, atomic_write_text
from .errors import SAMSPError

logger = logging.getLogger(__name__)

FORMAT = "samsp-model-1"
# settings that change the pixels the network sees; `ct_window` is recorded as null unless the modality is CT
RECORDED_SETTINGS = (
    *("modality", "ct_window", "slice_axis", "spacing", "in_channels", "image_size", "geometry"),
    *("num_classes", "class_names"),
)
# the keys `TrainingStateSaver` writes (train.json's `train#state_saver#objects`)
# recorded settings that are also network arguments (network argument -> setting)
NETWORK_SETTINGS = {
    "img_size": "image_size",
    "in_channels": "in_channels",
    "num_classes": "num_classes",
    "geometry": "geometry",
}
TRAINING_STATE_KEYS = {"network", "optimizer", "trainer"}
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_warned: set[tuple[str, Path]] = set()


@dataclass(frozen=True)
class TrainedModel:
    """A model file's weights and its record (model.json, or what an old nested file carried; None if none)."""

    path: Path
    state_dict: dict[str, Tensor]
    record: dict[str, Any] | None

    @property
    def network_args(self) -> dict[str, Any] | None:
        return (self.record or {}).get("network_args") or None

    @property
    def settings(self) -> dict[str, Any] | None:
        return (self.record or {}).get("settings")


def sidecar_path(model_path: str | Path) -> Path:
    """`model.json` for `model.pt` (`model.prev.json` for `model.prev.pt`)."""
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists, dict keys strings), so recorded and configured compare equal."""
    return json.loads(json.dumps(value))


def recorded_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `RECORDED_SETTINGS` of a config's `settings`, normalised as model.json stores them."""
    picked = {key: _plain(settings[key]) for key in RECORDED_SETTINGS if key in settings}
    if isinstance(picked.get("modality"), str):
        picked["modality"] = picked["modality"].upper()
    if "ct_window" in picked and picked.get("modality") != "CT":
        picked["ct_window"] = None  # only CT uses the window
    return picked


def save_model(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    network_args: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    details: Mapping[str, Any],
) -> None:
    """Write `path` (the plain state dict) and then its model.json, each atomically; `details` holds `epoch`,
    `metric_name`, `metric_value`."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(dict(state_dict), f))
    record = {
        "format": FORMAT,
        "network_args": _plain(network_args) if network_args is not None else None,
        "settings": recorded_settings(settings) if settings is not None else None,
        **_plain(dict(details)),
        "model_sha256": file_sha256(path),
    }
    atomic_write_text(sidecar_path(path), json.dumps(record, indent=2) + "\n")


def _warn_once(kind: str, path: Path, message: str) -> None:
    if (kind, path) not in _warned:
        _warned.add((kind, path))
        logger.warning(message)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise SAMSPError(f"{path}: trained model not found (training writes it to <bundle_root>/models/model.pt)")
    if path.stat().st_size == 0:
        raise SAMSPError(f"{path}: the file is empty (0 bytes), left by an interrupted copy or write; copy it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a file it cannot read
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SAMSPError(
            f"{path}: not a readable PyTorch model file ({reason}); it is truncated or was not written by "
            "torch.save: copy it again or retrain"
        ) from e


def _state_dict(path: Path, content: Any) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(weights, record of an old nested file) of a loaded model.pt, or one line saying what the file is instead."""
    if not isinstance(content, Mapping):
        raise SAMSPError(f"{path}: holds a {type(content).__name__}, not a model's state dict")
    if isinstance(content.get("model"), Mapping):  # the nested format written before model.json
        _warn_once(
            "nested",
            path,
            f"{path} is in the old nested format; it still works, but MONAI's tools (bundle.load, ckpt_export) "
            f"read no weights from it: convert it with `python scripts/convert_model.py {path}`",
        )
        legacy = {k: v for k, v in content.items() if k not in ("model", "network_args")}
        metric = next(((k, v) for k, v in legacy.items() if k != "epoch"), (None, None))
        record = {
            "network_args": content.get("network_args"),
            "settings": None,
            "epoch": legacy.get("epoch"),
            "metric_name": metric[0],
            "metric_value": metric[1],
        }
        return _state_dict(path, content["model"])[0], record
    if TRAINING_STATE_KEYS <= set(content):
        raise SAMSPError(
            f"{path}: this is a resumable training state ({', '.join(sorted(content))}), not a trained model; "
            "use the model.pt that training wrote beside it"
        )
    if not content or not all(isinstance(v, Tensor) for v in content.values()):
        names = ", ".join(list(map(str, content))[:5]) or "nothing"
        raise SAMSPError(f"{path}: not a model's state dict (it holds {names})")
    return dict(content), None


def _sidecar(path: Path) -> dict[str, Any] | None:
    """model.json of `path`, checked to describe this very file; None when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SAMSPError(f"{sidecar}: not readable JSON ({e}); copy it again together with {path.name}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise SAMSPError(f"{sidecar}: not a model record of format {FORMAT!r} (format {found!r})")
    if record.get("model_sha256") != (digest := file_sha256(path)):
        raise SAMSPError(
            f"{sidecar} describes another model file than {path} (SHA-256 {str(record.get('model_sha256'))[:12]} "
            f"recorded, {digest[:12]} found): copy the two files together, or delete {sidecar.name} to use "
            f"{path.name} with the config's settings unchecked"
        )
    return record


def load_model(path: str | Path) -> TrainedModel:
    """The weights and record of a model file, or one `SAMSPError` line saying why the file is not a model."""
    path = Path(path)
    state_dict, record = _state_dict(path, _read(path))
    if record is None:
        record = _sidecar(path)
        if record is None:
            _warn_once(
                "plain",
                path,
                f"{path} has no {sidecar_path(path).name} beside it: its network and preprocessing settings are "
                "taken from the config, unchecked",
            )
    return TrainedModel(path, state_dict, record)


def check_fits(model: TrainedModel, network: torch.nn.Module) -> None:
    """Refuse weights whose names or shapes differ from `network`'s, in one line (not load_state_dict's 100)."""
    expected = getattr(network, "module", network).state_dict()
    got = model.state_dict
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    resized = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or resized):
        return
    if unexpected and all(k.startswith(SAM_PARTS) for k in got):
        raise SAMSPError(
            f"{model.path}: this is a segment_anything checkpoint (the base SAM weights), not a trained model; "
            "give it to training as --sam_checkpoint"
        )
    tokens = next((k for k in resized if k.endswith("mask_decoder.mask_tokens.weight")), None)
    if tokens is not None and got[tokens].shape[0] == expected[tokens].shape[0] - 2:
        raise SAMSPError(
            f"{model.path}: its decoder has {got[tokens].shape[0]} mask tokens where this network has "
            f"{expected[tokens].shape[0]}: it was trained for {got[tokens].shape[0] - 3} class(es), or by samsp-monai "
            "before 0.3, whose decoder dropped SAM's multimask tokens (one token per class + 1); such a model cannot "
            "be converted (every token attends to the others): retrain it"
        )
    parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in (("missing", missing), ("unexpected", unexpected)) if v]
    if resized:
        k = resized[0]
        parts.append(
            f"{len(resized)} of another shape (e.g. {k!r}: {tuple(got[k].shape)}, here {tuple(expected[k].shape)})"
        )
    raise SAMSPError(
        f"{model.path}: its weights do not fit the configured network ({'; '.join(parts)}); pass the config files "
        "and overrides the model was trained with"
    )


def convert_nested(path: str | Path, settings: Mapping[str, Any] | None = None) -> Path:
    """Rewrite an old nested model file as plain model.pt + model.json (`settings`: the config it was trained with,
    for the pixel settings the old format did not record; the network arguments it did record win). Returns the
    model.json written."""
    path = Path(path)
    state_dict, record = _state_dict(path, _read(path))
    if record is None:
        raise SAMSPError(f"{path}: already a plain state dict; nothing to convert")
    args = record["network_args"] or {}
    if settings is not None:
        settings = dict(settings) | {key: args[arg] for arg, key in NETWORK_SETTINGS.items() if arg in args}
    details = {k: record[k] for k in ("epoch", "metric_name", "metric_value")}
    save_model(path, state_dict, record["network_args"], settings, details)
    return sidecar_path(path)
