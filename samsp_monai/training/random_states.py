"""The random state of a training run, saved with its training state so that a resumed run goes on exactly as if
it had never stopped.

`monai.utils.set_determinism` seeds every run the same way at its start, so without this a run resumed after
epoch N would shuffle and augment epoch N+1 like epoch 1, and an interrupted run would end with another best
model than the same run without interruption. Saved: torch's CPU (and CUDA) generators, NumPy's and Python's
global generators, and the `RandomState` of every randomizable transform of the training pipeline (MONAI's
DataLoader seeds those once, when it is built).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable, Transform


def randomizable_parts(transform: Any) -> Iterator[Randomizable]:
    """Every `Randomizable` in `transform`: itself, the transforms of a `Compose`, and the transforms a
    dictionary transform wraps (`RandScaleIntensityd.scaler`, ...), depth first, each once."""
    seen: set[int] = set()

    def walk(obj: Any) -> Iterator[Randomizable]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            yield obj
        for value in vars(obj).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Transform):
                    yield from walk(item)

    yield from walk(transform)


def pack_numpy_state(state: tuple) -> dict[str, Any]:
    """A NumPy MT19937 state as a tensor and numbers, which `torch.load(weights_only=True)` reads."""
    _, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def unpack_numpy_state(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"])


class RandomStates:
    """`state_dict`/`load_state_dict` for the generators a training run draws from (see the module docstring).

    `transform`: the training pipeline (e.g. `train#preprocessing`); its randomizable parts are found in the
    same order each time the config is built, which is what lets a saved list be put back in place.
    """

    def __init__(self, transform: Any = None) -> None:
        self.transforms = list(randomizable_parts(transform)) if transform is not None else []

    def state_dict(self) -> dict[str, Any]:
        python_version, python_keys, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": pack_numpy_state(np.random.get_state()),
            "python": {"version": python_version, "keys": list(python_keys), "gauss": python_gauss},
            "transforms": [pack_numpy_state(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(
                f"the saved random state covers {len(state['transforms'])} random transforms, the training pipeline "
                f"has {len(self.transforms)}"
            )
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        np.random.set_state(unpack_numpy_state(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["keys"]), python["gauss"]))
        for transform, saved in zip(self.transforms, state["transforms"], strict=True):
            transform.R.set_state(unpack_numpy_state(saved))
