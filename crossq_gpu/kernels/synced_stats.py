"""Batch statistics over the batches of every rank, for data-parallel BatchRenorm.

Each rank reduces its rows to per-channel sums of (h − c) and (h − c)², one all-reduce adds
them over the ranks, and mean/variance follow; autograd flows back through the all-reduce
(its backward is the same all-reduce of the gradients), so each rank's input gradient holds
the terms that every other rank's loss contributes through μ_B and σ_B — exactly the
gradient of BRN on the concatenated batch. The shift c (the running mean, identical on every
rank) keeps Σ(h − c)² − (Σ(h − c))²/N well conditioned: the one-collective form of the
two-pass variance.

Functional collectives are traceable, so this compiles with `torch.compile(fullgraph=True)`
and can be captured in a CUDA graph with NCCL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor
from torch.distributed import ProcessGroup


def sum_over_ranks(x: Tensor, group: ProcessGroup) -> Tensor:
    """Traceable functional collective under compile; eager, the in-place one (a third cheaper on gloo)."""
    if torch.compiler.is_compiling():
        return funcol.all_reduce(x, "sum", group)
    x = x.clone()
    dist.all_reduce(x, group=group)
    return x


class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks, forward and backward (the gradient of a sum w.r.t. each addend is the total gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return sum_over_ranks(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return sum_over_ranks(grad.contiguous(), ctx.group), None


def global_moments(h: Tensor, shift: Tensor, group: ProcessGroup) -> tuple[Tensor, Tensor, int]:
    """(mean, biased variance, rows) of h [.., N, C] over dim −2 and over every rank's rows.

    Every rank must pass the same N (the learner's per-rank batch size). Differentiable in h.
    """
    d = h - shift.unsqueeze(-2)
    sums = _AllReduceSum.apply(torch.stack([d.sum(-2), (d * d).sum(-2)]), group)
    n = h.shape[-2] * dist.get_world_size(group)
    mean_d = sums[0] / n
    var = (sums[1] / n - mean_d * mean_d).clamp_min(0.0)
    return shift + mean_d, var, n
