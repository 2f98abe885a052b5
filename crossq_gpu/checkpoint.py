"""Checkpoints: written atomically, read back with one clear error when unusable."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from crossq_gpu.atomic import atomic_write

FORMAT = "crossq_gpu/2"  # 2: per-rank state under "ranks" (data-parallel runs)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this program."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Replace `path` atomically: a kill or a full disk leaves the previous checkpoint whole.

    An OSError (no space, no permission) propagates for the caller to stop on.
    """
    atomic_write(Path(path), lambda f: torch.save({"format": FORMAT, **payload}, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU (tensors only: no code runs from the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("crossq_gpu/"):
        raise CheckpointError(f"{path} is not a crossq_gpu checkpoint")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path} was written by another version of crossq_gpu "
                              f"(format {payload['format']}, this one reads {FORMAT})")
    return payload
