"""Image embeddings of a frozen encoder, computed once and reused by later epochs, arms and seeds.

On a CPU the pretrained encoder is nearly all of the cost (LiteMedSAM: 75 GFLOPs, about 2.4 s per 256 px image
on one core; the decoder about 0.1 s), and a frozen encoder gives the same embedding for the same input every
time. The key of an entry is the SHA-256 of the exact tensor the encoder sees (so the image's content, its
preprocessing, resizing, padding and any flip are all in it, and nothing that changes them can hit a stale
entry) together with the SHA-256 of the encoder's weights. Entries are files `<dir>/<key[:2]>/<key>.pt` holding
the embedding in `dtype` (float16 by default: 2 MB for LiteMedSAM's 256 x 64 x 64), its key and the SHA-256 of
its bytes; each is written atomically (temporary file, then rename), so two processes can share a folder, and an
entry that cannot be read or does not match its checksum is recomputed, never used. The cache returns what it
stores, also on a miss, so the first epoch sees exactly what later epochs read back.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import atomic_write

logger = logging.getLogger(__name__)

LOG_EVERY = 200  # new entries between two progress lines


def default_cache_dir() -> str:
    """`$SAMSP_EMBEDDING_CACHE`, else `$XDG_CACHE_HOME/samsp_monai/embeddings` (`~/.cache/...`): one folder for
    every run on this machine, so arms, seeds and reruns on the same images share their entries."""
    if os.environ.get("SAMSP_EMBEDDING_CACHE"):
        return os.environ["SAMSP_EMBEDDING_CACHE"]
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samsp_monai" / "embeddings")


def tensor_digest(tensor: Tensor) -> str:
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """`cache(encoder, x)` = `encoder(x)` for a batch of encoder inputs, read from `directory` where known."""

    def __init__(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        self.directory, self.dtype = Path(directory), dtype
        self.hits = self.misses = self.damaged = 0
        self._weights: tuple[tuple, str] | None = None

    def __call__(self, encoder: nn.Module, x: Tensor) -> Tensor:
        weights = self.weights_digest(encoder)
        keys = [hashlib.sha256((weights + tensor_digest(image)).encode()).hexdigest() for image in x]
        found = [self.read(key) for key in keys]
        missing = [i for i, embedding in enumerate(found) if embedding is None]
        if missing:
            computed = encoder(x[missing]).detach().to("cpu", self.dtype)
            for i, embedding in zip(missing, computed, strict=True):
                self.write(keys[i], embedding)
                found[i] = embedding
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing and self.misses // LOG_EVERY != (self.misses - len(missing)) // LOG_EVERY:
            logger.info("embedding cache %s: %d computed, %d reused", self.directory, self.misses, self.hits)
        return torch.stack(found).to(x.device, torch.float32)

    def weights_digest(self, encoder: nn.Module) -> str:
        """SHA-256 of the encoder's state dict, recomputed only when a tensor was replaced or changed in place."""
        state = encoder.state_dict(keep_vars=True)
        fingerprint = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
        if self._weights is None or self._weights[0] != fingerprint:
            digest = hashlib.sha256()
            for name, t in state.items():
                digest.update(name.encode() + tensor_digest(t).encode())
            self._weights = (fingerprint, digest.hexdigest())
        return self._weights[1]

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.pt"

    def read(self, key: str) -> Tensor | None:
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

    def write(self, key: str, embedding: Tensor) -> None:
        entry = {"key": key, "embedding": embedding.clone(), "sha256": tensor_digest(embedding)}
        atomic_write(self.path(key), lambda f: torch.save(entry, f))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*/*.pt"))
