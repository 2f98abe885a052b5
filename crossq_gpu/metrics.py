"""Metrics: accumulated on the device, read once per log interval, written as JSONL,
TensorBoard scalars and a progress bar.

Nothing here reads a device tensor inside the hot loop; `MetricsWindow.read` and
`EpisodeReturns.read` are the only host syncs, and the learner calls them every
`log_every` env steps.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from crossq_gpu.atomic import atomic_write

# The update's metrics (what `Update.step` returns), each with its TensorBoard tag: a train row
# holds their means over the gradient steps since the previous row. README's "What a run
# writes" describes every field of both rows.
UPDATE_TAGS = {
    "critic_loss": "losses/critic_loss", "actor_loss": "losses/actor_loss",
    "alpha": "losses/alpha", "q_mean": "losses/q_mean", "entropy": "losses/entropy",
}
TRAIN_FIELDS = tuple(UPDATE_TAGS)
# TensorBoard tag for each metrics.jsonl field (CleanRL-style namespaces).
TB_TAGS = {"return_mean": "charts/return_mean", "sps": "charts/sps", "ups": "charts/ups", **UPDATE_TAGS}
EVAL_TAGS = {"return_mean": "eval/return_mean", "return_std": "eval/return_std"}
LOSS_FIELDS = ("critic_loss", "actor_loss")
Reduce = Callable[[Tensor], Tensor]  # sums over data-parallel ranks (`Ranks.all_sum`); identity alone


def _identity(t: Tensor) -> Tensor:
    return t


class MetricsWindow:
    """Running sums of per-step metric tensors since the last read, kept on the device.

    Also tracks, without a host sync, the first gradient step whose loss was NaN/Inf.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_nonfinite = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, metrics: dict[str, Tensor], grad_step: int) -> None:
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for name, value in metrics.items():
            if name in self.sums:
                self.sums[name] += value.float()
            else:
                self.sums[name] = value.detach().float().clone()
            self.counts[name] = self.counts.get(name, 0) + 1
            if name in LOSS_FIELDS:
                bad = bad | ~torch.isfinite(value)
        mark = bad & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(mark, torch.full_like(self.first_nonfinite, grad_step),
                                           self.first_nonfinite)

    def read(self, reduce: Reduce = _identity) -> dict[str, float | None]:
        """Means since the last read (None where nothing was recorded); resets the window.

        `reduce` sums the window over data-parallel ranks, which record the same names.
        """
        names = list(self.sums)
        means = {}
        if names:
            counts = torch.tensor([self.counts[n] for n in names], dtype=torch.float32, device=self.device)
            sums, counts = reduce(torch.stack([torch.stack([self.sums[n] for n in names]), counts])).tolist()
            means = {n: s / c for n, s, c in zip(names, sums, counts)}
        self.sums, self.counts = {}, {}
        return {field: means.get(field) for field in TRAIN_FIELDS}

    def nonfinite_step(self) -> int | None:
        """The first gradient step with a NaN/Inf loss, or None (one host sync)."""
        step = int(self.first_nonfinite)
        return None if step < 0 else step

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "first_nonfinite": self.first_nonfinite}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])
        self.first_nonfinite = state["first_nonfinite"].to(self.device)


class EpisodeReturns:
    """Undiscounted returns of the episodes each env is in, and of those that finished."""

    def __init__(self, num_envs: int, device: torch.device) -> None:
        self.running = torch.zeros(num_envs, device=device)
        self.finished_sum = torch.zeros((), device=device)
        self.finished_count = torch.zeros((), device=device)

    def update(self, reward: Tensor, done: Tensor) -> None:
        self.running += reward
        self.finished_sum += (self.running * done).sum()
        self.finished_count += done.sum()
        self.running *= ~done

    def read(self, reduce: Reduce = _identity) -> float | None:
        """Mean return of the episodes finished since the last read (None if none); resets.

        `reduce` adds up the episodes of every data-parallel rank.
        """
        total, count = reduce(torch.stack([self.finished_sum, self.finished_count])).tolist()
        self.finished_sum.zero_()
        self.finished_count.zero_()
        return total / count if count else None

    def state_dict(self) -> dict[str, Tensor]:
        return {"running": self.running, "finished_sum": self.finished_sum, "finished_count": self.finished_count}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)


class MetricsWriter:
    """Appends rows to metrics.jsonl and mirrors the numbers to TensorBoard.

    A run that starts at env step `start_step` (its checkpoint's; 0 for a new run) first
    drops the records written after that step, so that they continue the rows and events
    the checkpoint saw instead of repeating steps; `note` says what was dropped, if anything.
    """

    def __init__(self, out_dir: Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow, so here

        self.path = out_dir / "metrics.jsonl"
        self.note = describe_cut(start_step, *cut_records(self.path, start_step))
        # TensorBoard hides earlier events at steps >= purge_step; those at start_step stay,
        # as their rows stay in metrics.jsonl.
        self.tb = SummaryWriter(log_dir=str(out_dir), purge_step=start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        tags = EVAL_TAGS if row["kind"] == "eval" else TB_TAGS
        for name, tag in tags.items():
            if row.get(name) is not None:
                self.tb.add_scalar(tag, row[name], row["env_steps"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def cut_records(path: Path, env_step: int) -> tuple[int, int]:
    """Keep the metrics.jsonl rows at or before `env_step`; returns (rows dropped, unreadable lines dropped).

    An unreadable line is the torn end of a write a crash interrupted. The file is replaced
    atomically, and only when something is dropped.
    """
    if not path.exists():
        return 0, 0
    kept, late, unreadable = [], 0, 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        step = _env_step(line)
        if step is None:
            unreadable += 1
        elif step > env_step:
            late += 1
        else:
            kept.append(line + b"\n")
    if late or unreadable:
        atomic_write(path, lambda f: f.write(b"".join(kept)))
    return late, unreadable


def _env_step(line: bytes) -> int | None:
    """A row's env step; None for a line that is not a whole row."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("env_steps") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


def describe_cut(env_step: int, late: int, unreadable: int) -> str | None:
    """The one line a run prints about the records `cut_records` dropped (None if none)."""
    if not (late or unreadable):
        return None
    after = "after the checkpoint" if env_step else "by an earlier run in this folder"
    what = [f"{late} metric row{'s' * (late != 1)} written {after}"] if late else []
    what += [f"{unreadable} torn line{'s' * (unreadable != 1)}"] if unreadable else []
    return f"{'resuming' if env_step else 'starting'} at env step {env_step}: dropped {' and '.join(what)}"


def progress_bar(total: int, initial: int, show: bool = True) -> tqdm:
    """Env-step progress; silent when stdout is not a terminal (CI, pipes, files) or not `show`."""
    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                disable=not (show and sys.stdout.isatty()), file=sys.stdout)
