"""Batch Renormalization (Ioffe 2017) in plain torch ops — the oracle for the Triton kernels.

This is docs/design.md §2 written out line by line. It is also the CPU implementation, so it must
stay free of host syncs: the warmup switch is a `torch.where` on the `steps` tensor, never a
Python `if`, and the whole function compiles with `torch.compile(fullgraph=True)`.

Shapes: x is [N, C] or an ensemble [E, N, C]; statistics are taken over N (dim -2);
per-channel tensors are [C] or [E, C]; `steps` is an int64 scalar shared by the ensemble.
The caller (`batch_renorm`) has already cast x to float32 and disabled autocast.
"""

from typing import Literal

import torch
from torch import Tensor
from torch.distributed import ProcessGroup

from crossq_gpu.kernels.synced_stats import global_moments

Relu = Literal["none", "input", "output"]


@torch.library.custom_op("crossq_gpu::stats_snapshot", mutates_args=())
def _stats_snapshot(tensors: list[Tensor]) -> list[Tensor]:
    return [t.clone() for t in tensors]


@_stats_snapshot.register_fake
def _(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.empty_like(t) for t in tensors]


def read_stats(*tensors: Tensor) -> tuple[Tensor, ...]:
    """A read of running_mean/running_var/steps that torch.compile saves instead of recomputing.

    torch 2.13's AOT partitioner may recompute, in the backward, values derived from an
    input that the same graph mutates — from the already-mutated buffer (pytorch/pytorch
    PR #197039). A train-mode BRN call (r, d from the old stats) or an eval-mode call after
    one in the same compiled graph then gets silently wrong gradients. An opaque custom op
    is never recomputed, so under compile every differentiable read goes through a copy;
    eager reads the buffers directly. One op call per layer: each costs ~20 us on a CPU.
    """
    return tuple(_stats_snapshot(list(tensors))) if torch.compiler.is_compiling() else tensors


@torch.no_grad()
def renorm_factors(
    mean: Tensor,
    var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    *,
    eps: float,
    r_max: float,
    d_max: float,
    warmup_steps: int,
) -> tuple[Tensor, Tensor]:
    """r and d (constants for autograd) from the batch and the *current* running stats.

    r = 1, d = 0 while steps < warmup_steps, which makes BRN plain batch norm.
    """
    running_mean, running_var, steps = read_stats(running_mean, running_var, steps)
    running_std = torch.sqrt(running_var + eps)
    r = (torch.sqrt(var + eps) / running_std).clamp(1.0 / r_max, r_max)
    d = ((mean - running_mean) / running_std).clamp(-d_max, d_max)
    warm = steps < warmup_steps
    return torch.where(warm, 1.0, r), torch.where(warm, 0.0, d)


@torch.no_grad()
def update_running_stats(
    mean: Tensor,
    var: Tensor,
    n: int,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    *,
    momentum: float,
) -> None:
    """In-place update with torch.nn.BatchNorm's convention (unbiased variance, momentum on the new value)."""
    running_mean.lerp_(mean, momentum)
    running_var.lerp_(var * (n / (n - 1)), momentum)
    steps.add_(1)


def batch_renorm_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    *,
    training: bool,
    momentum: float,
    eps: float,
    r_max: float,
    d_max: float,
    warmup_steps: int,
    relu: Relu = "none",
    group: ProcessGroup | None = None,
) -> Tensor:
    """y = γ·((h − μ_B)/σ_B·r + d) + β with h = x or relu(x); eval uses the running stats.

    With a process `group`, μ_B and σ_B are those of the batches of all its ranks together.
    """
    h = torch.relu(x) if relu == "input" else x
    if training:
        if group is None:
            # Two passes (mean, then mean of squared deviations): exact like var_mean, and an
            # order of magnitude faster than var_mean's strided reduction on CPU.
            mean = h.mean(dim=-2)
            centered = h - mean.unsqueeze(-2)
            var = (centered * centered).mean(dim=-2)
            n = h.shape[-2]
        else:
            mean, var, n = global_moments(h, read_stats(running_mean)[0].detach(), group)
        r, d = renorm_factors(
            mean.detach(), var.detach(), running_mean, running_var, steps,
            eps=eps, r_max=r_max, d_max=d_max, warmup_steps=warmup_steps,
        )
        update_running_stats(
            mean.detach(), var.detach(), n, running_mean, running_var, steps,
            momentum=momentum,
        )
        # y = γ((h − μ)/σ·r + d) + β folded into y = h·scale + shift over [.., C] vectors:
        # one pass over the [N, C] activations instead of six, same autograd graph through μ, σ.
        scale = weight * r * torch.rsqrt(var + eps)
        shift = bias + weight * d - mean * scale
    else:
        running_mean, running_var = read_stats(running_mean, running_var)
        scale = weight * torch.rsqrt(running_var + eps)
        shift = bias - running_mean * scale
    y = torch.addcmul(shift.unsqueeze(-2), h, scale.unsqueeze(-2))
    return torch.relu(y) if relu == "output" else y
