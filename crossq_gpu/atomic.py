"""Crash-consistent file replacement: after a kill or a power loss, a path holds either its
old content or its new content in full, never a mix, a truncated file or an empty one.

One process writes a given path (rank 0 owns a run folder), so a temp file that a killed
writer left beside it is stale and the next write removes it.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` with what `write` puts into the file object it is given.

    temp file in the same folder → fsync it → rename over `path` → fsync the folder, so the
    rename itself is on disk. If anything fails (a full disk, a lost permission) the old
    file is untouched, the temp file is removed and the OSError propagates.
    """
    path = Path(path)
    for stale in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's owner-only 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: fsync the directory itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
