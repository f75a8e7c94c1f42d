"""Atomic file writes: a reader (or a crash) never sees half a file, and the previous file survives."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import SAMSPError

logger = logging.getLogger(__name__)

# `atomic_write`'s temporary files: `.<name>.<mkstemp's 8 random characters>.tmp` beside the target
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


class FileWriteError(SAMSPError, OSError):
    """A file could not be written (a full disk, a read-only folder); the previous file is left as it was."""


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the file private to its writer
        os.replace(tmp, path)
    except Exception as err:  # a full disk reaches torch.save as a RuntimeError of its zip writer
        Path(tmp).unlink(missing_ok=True)
        raise FileWriteError(
            f"{path}: could not be written ({_one_line(err)}); the previous {path.name}, if any, is unchanged. "
            "Free disk space (or choose another folder) and rerun"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete `atomic_write` temporary files in `folder` left by a write that was killed mid-way.

    Call it only while holding the folder's lock: a live writer's temporary file looks the same.
    """
    folder = Path(folder)
    stale = (
        sorted(p for p in folder.glob(".*.tmp") if p.is_file() and TEMP_NAME.match(p.name)) if folder.is_dir() else []
    )
    for path in stale:
        path.unlink(missing_ok=True)
        logger.warning("removed %s, left by an interrupted checkpoint write", path)
    return stale
