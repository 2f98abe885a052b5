"""Data-parallel training across processes: `torchrun --nproc-per-node K -m crossq_gpu.learner`.

Each rank owns its environments and its replay buffer and samples its own batch; the ranks
keep one set of weights by averaging gradients after every backward, and BatchRenorm's
batch statistics are taken over the batches of all ranks (`kernels/synced_stats.py`), so
every update sees the global batch: K × batch_size rows, K × 2·batch_size in CrossQ's joint
critic forward. Rank 0 alone logs, evaluates and writes checkpoints.

Backends: NCCL for CUDA tensors, gloo for CPU ones. Host-side decisions every rank must take
together (stop on Ctrl-C, stop on a NaN loss, gather state for a checkpoint) go through a
gloo group, so they never touch the CUDA stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

from crossq_gpu.kernels.batch_renorm import BatchRenorm1d
from crossq_gpu.kernels.synced_stats import sum_over_ranks


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as torchrun announced it (0 without torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0"))


class RankSetupError(ValueError):
    """A problem of one rank (not of the shared command line), so that rank reports it itself."""


def pin_local_gpu() -> None:
    """Show this rank only its own GPU (the LOCAL_RANK-th), to torch and to JAX alike.

    Must run before anything initialises CUDA; JAX would otherwise place every rank's Brax
    envs on GPU 0. A CUDA_VISIBLE_DEVICES the user set is respected and indexed into.
    """
    if not launched_by_torchrun():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)
        return
    ids = [v for v in visible.split(",") if v.strip()]
    if local_rank >= len(ids):
        raise RankSetupError(f"rank {local_rank} of this node has no GPU: CUDA_VISIBLE_DEVICES={visible!r} lists "
                         f"{len(ids)}; run at most one process per GPU (--nproc-per-node {len(ids)})")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the K processes of a run (K = 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    group: ProcessGroup | None = None  # the backend's group: gradients, BRN statistics, metrics
    control: ProcessGroup | None = None  # gloo: host-side agreement and checkpoint state

    @property
    def main(self) -> bool:
        return self.rank == 0

    # --- device tensors (the backend group) ---------------------------------------------

    def average_gradients_(self, params: Iterable[Tensor]) -> None:
        """Replace every gradient by its mean over the ranks: one collective per call."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_copy_(grads, self.mean_over_ranks(grads))

    def mean_over_ranks(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor's mean over the ranks, as new tensors: one collective, traceable by torch.compile."""
        if self.world == 1:
            return list(tensors)
        flat = sum_over_ranks(torch.cat([t.reshape(-1) for t in tensors]), self.group) / self.world
        return [f.view_as(t) for f, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def all_sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over the ranks (for metric windows, read once per log interval)."""
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t, group=self.group)
        return t

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite every tensor with rank 0's (identical weights whatever each rank initialised)."""
        if self.world == 1:
            return
        for t in tensors:
            dist.broadcast(t.data, src=0, group=self.group)

    # --- host values (the gloo group) ---------------------------------------------------

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: stop requests are taken together."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def min(self, value: int) -> int:
        """The smallest `value` over the ranks (e.g. the first gradient step any rank saw a NaN at)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` (moved to the CPU) on rank 0, in rank order; None elsewhere."""
        obj = to_cpu(obj)
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out


def start(device: torch.device, timeout_min: float = 30.0) -> Ranks:
    """Join the process group torchrun describes (env://); a single process gets `Ranks()`."""
    if not launched_by_torchrun():
        return Ranks()
    cuda = device.type == "cuda"
    if cuda:  # after pin_local_gpu the rank's one GPU is cuda:0
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min),
                            device_id=device if cuda else None)
    group = dist.group.WORLD
    control = dist.new_group(backend="gloo") if cuda else group
    return Ranks(dist.get_rank(), dist.get_world_size(), group, control)


def stop(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it (through dicts, lists, tuples) copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def sync_batch_renorm(module: torch.nn.Module, ranks: Ranks) -> None:
    """Make every BatchRenorm layer in `module` take its training statistics over all ranks."""
    for layer in module.modules():
        if isinstance(layer, BatchRenorm1d):
            layer.process_group = ranks.group
