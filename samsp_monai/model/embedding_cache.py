"""Image embeddings of a frozen encoder, computed once and reused by later epochs, arms, seeds and requests.

On a CPU the pretrained encoder is nearly all of the cost (LiteMedSAM: 75 GFLOPs, about 2.4 s per 256 px image
on one core; the decoder about 0.1 s), and a frozen encoder gives the same embedding for the same input every
time. The key of an entry is the SHA-256 of the exact tensor the encoder sees (so the image's content, its
preprocessing, resizing, padding and any flip are all in it, and nothing that changes them can hit a stale
entry) together with the SHA-256 of the encoder's weights (and a salt naming a runtime that computes otherwise,
such as bf16). The cache returns what it stores, also on a miss, so the first epoch or request sees exactly what
later ones read back. Two stores:

- a folder (training): entries are files `<dir>/<key[:2]>/<key>.pt` holding the embedding in `dtype` (float16 by
  default: 2 MB for LiteMedSAM's 256 x 64 x 64), its key and the SHA-256 of its bytes; each is written atomically
  (temporary file, then rename), so two processes can share a folder, and an entry that cannot be read or does
  not match its checksum is recomputed, never used;
- `"memory"` (serving): one store per process, shared by every network in it (MONAI Label's inference and
  scoring tasks), bounded to `$SAMSP_EMBEDDING_CACHE_MB` (default 2048) MB, least recently used entries dropped
  first; when the model of an `owner` (the served model's folder) changes, that model's old entries are dropped.
  It keeps float32 (4 MB per LiteMedSAM slice: about 500 slices by default), so a served answer equals the
  bundle's own inference voxel for voxel.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..paths import user_cache_dir

logger = logging.getLogger(__name__)

LOG_EVERY = 200  # new entries between two progress lines
MEMORY = "memory"
DEFAULT_MEMORY_MB = 2048


def default_cache_dir() -> str:
    """`$SAMSP_EMBEDDING_CACHE`, else `$XDG_CACHE_HOME/samsp_monai/embeddings` (`~/.cache/...`): one folder for
    every run on this machine, so arms, seeds and reruns on the same images share their entries."""
    if os.environ.get("SAMSP_EMBEDDING_CACHE"):
        return os.environ["SAMSP_EMBEDDING_CACHE"]
    return str(user_cache_dir("embeddings"))


def tensor_digest(tensor: Tensor) -> str:
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, t in state.items():
        digest.update(name.encode() + tensor_digest(t).encode())
    return digest.hexdigest()


class WeightsDigest:
    """`digest(module)`: `state_digest` of its weights, recomputed only when a tensor was replaced or changed in
    place (a load_state_dict, an optimiser step), which a fingerprint of data pointers and versions shows."""

    def __init__(self) -> None:
        self._last: tuple[tuple, str] | None = None

    def __call__(self, module: nn.Module) -> str:
        state = module.state_dict(keep_vars=True)
        fingerprint = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
        if self._last is None or self._last[0] != fingerprint:
            self._last = (fingerprint, state_digest(state))
        return self._last[1]


class DiskStore:
    """Entries as checksummed files in a folder, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.damaged = 0

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            valid = entry["key"] == key and entry["sha256"] == tensor_digest(entry["embedding"])
        except Exception:  # truncated or foreign files raise many different errors: all mean "recompute"
            valid = False
        if not valid:
            self.damaged += 1
            logger.warning("embedding cache entry %s is damaged; recomputing it", path)
            return None
        return entry["embedding"]

    def put(self, key: str, embedding: Tensor, weights: str, owner: str | None) -> None:
        entry = {"key": key, "embedding": embedding.clone(), "sha256": tensor_digest(embedding)}
        atomic_write(self.path(key), lambda f: torch.save(entry, f))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*/*.pt"))


class MemoryStore:
    """Entries in memory, at most `max_bytes`, least recently used dropped first; an owner's change of weights
    drops the entries of its previous weights. One per process (`MemoryStore.shared()`), so a copied network
    (MONAI Label deep-copies its template network at each model load) shares it rather than copying it."""

    _shared: MemoryStore | None = None

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, tuple[str, Tensor]] = OrderedDict()
        self.owners: dict[str, str] = {}
        self.damaged = self.bytes = 0

    @classmethod
    def shared(cls) -> MemoryStore:
        if cls._shared is None:
            mb = int(os.environ.get("SAMSP_EMBEDDING_CACHE_MB", DEFAULT_MEMORY_MB))
            cls._shared = cls(mb * 2**20)
        return cls._shared

    def __deepcopy__(self, memo: dict) -> MemoryStore:
        return self

    def get(self, key: str) -> Tensor | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][1]

    def put(self, key: str, embedding: Tensor, weights: str, owner: str | None) -> None:
        previous = self.owners.get(owner) if owner is not None else None
        if previous is not None and previous != weights:
            self.forget(previous)
            logger.info("embedding cache: the model in %s changed; its old embeddings were dropped", owner)
        if owner is not None:
            self.owners[owner] = weights
        self.drop(key)
        self.entries[key] = (weights, embedding.clone())
        self.bytes += embedding.nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            self.drop(next(iter(self.entries)))

    def drop(self, key: str) -> None:
        if key in self.entries:
            embedding = self.entries.pop(key)[1]
            self.bytes -= embedding.nbytes

    def forget(self, weights: str) -> None:
        for key in [k for k, (w, _) in self.entries.items() if w == weights]:
            self.drop(key)

    def size_bytes(self) -> int:
        return self.bytes


class EmbeddingCache:
    """`cache(encoder, x)` = `encoder(x)` for a batch of encoder inputs, read from `location` (a folder, or
    `"memory"`) where known, stored in `dtype` (default: float16 in a folder, float32 in memory). `encode` computes
    the misses instead of `encoder` itself (an exported runtime of the same weights); `salt` keeps apart the entries
    of a runtime that computes otherwise (bf16)."""

    def __init__(
        self,
        location: str | Path,
        dtype: torch.dtype | None = None,
        owner: str | None = None,
        weights_digest: WeightsDigest | None = None,
    ) -> None:
        self.location, self.owner = str(location), owner
        in_memory = self.location == MEMORY
        self.store = MemoryStore.shared() if in_memory else DiskStore(Path(location))
        self.dtype = dtype or (torch.float32 if in_memory else torch.float16)
        self.hits = self.misses = 0
        self.weights_digest = weights_digest or WeightsDigest()

    @property
    def bounded(self) -> bool:
        """Whether the store evicts (memory): entries of weights that keep changing then cost nothing lasting."""
        return isinstance(self.store, MemoryStore)

    @property
    def damaged(self) -> int:
        return self.store.damaged

    def __call__(
        self, encoder: nn.Module, x: Tensor, encode: Callable[[Tensor], Tensor] | None = None, salt: str = ""
    ) -> Tensor:
        weights = self.weights_digest(encoder) + salt
        keys = [hashlib.sha256((weights + tensor_digest(image)).encode()).hexdigest() for image in x]
        found = [self.store.get(key) for key in keys]
        missing = [i for i, embedding in enumerate(found) if embedding is None]
        if missing:
            computed = (encode or encoder)(x[missing]).detach().to("cpu", self.dtype)
            for i, embedding in zip(missing, computed, strict=True):
                self.store.put(keys[i], embedding, weights, self.owner)
                found[i] = embedding
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing and self.misses // LOG_EVERY != (self.misses - len(missing)) // LOG_EVERY:
            logger.info("embedding cache %s: %d computed, %d reused", self.location, self.misses, self.hits)
        return torch.stack(found).to(x.device, torch.float32)

    def size_bytes(self) -> int:
        return self.store.size_bytes()
