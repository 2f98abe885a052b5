"""Batch Renormalization (Ioffe 2017) in plain torch ops — the oracle for the Triton kernels.

This is docs/design.md §2 written out line by line. It is also the CPU implementation, so it must
stay free of host syncs: the warmup switch is a `torch.where` on the `steps` tensor, never a
Python `if`, and the whole function compiles with `torch.compile(fullgraph=True)`.

Shapes: x is [N, C] or an ensemble [E, N, C]; statistics are taken over N (dim -2);
per-channel tensors are [C] or [E, C]; `steps` is an int64 scalar shared by the ensemble.
The caller (`batch_renorm`) has already cast x to float32 and disabled autocast.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributed import ProcessGroup

from crossq_gpu.kernels.synced_stats import global_moments

Relu = Literal["none", "input", "output"]


@dataclass(frozen=True)
class BrnParams:
    """BRN's hyperparameters: one object from the layer down to the kernel call (docs/design.md §2)."""

    momentum: float = 0.01
    """Weight of the new batch statistics in the running ones (torch.nn.BatchNorm's convention)."""
    eps: float = 1e-3
    """Added to every variance before its square root."""
    r_max: float = 3.0
    """r is clipped to [1/r_max, r_max]."""
    d_max: float = 5.0
    """d is clipped to [−d_max, d_max]."""
    warmup_steps: int = 100_000
    """Steps of plain batch norm (r = 1, d = 0) before renormalisation starts."""


@torch.library.custom_op("crossq_gpu::stats_snapshot", mutates_args=())
def _stats_snapshot(tensors: list[Tensor]) -> list[Tensor]:
    return [t.clone() for t in tensors]


@_stats_snapshot.register_fake
def _(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.empty_like(t) for t in tensors]


_copy_reads = True  # read at trace time by read_stats; see gradients_traced_inline


def read_stats(*tensors: Tensor) -> tuple[Tensor, ...]:
    """A read of running_mean/running_var/steps that torch.compile saves instead of recomputing.

    torch 2.13's AOT partitioner may recompute, in the backward, values derived from an
    input that the same graph mutates — from the already-mutated buffer (pytorch/pytorch
    PR #197039). A train-mode BRN call (r, d from the old stats) or an eval-mode call after
    one in the same compiled graph then gets silently wrong gradients. An opaque custom op
    is never recomputed, so under compile every differentiable read goes through a copy
    (except in a trace under `gradients_traced_inline`); eager reads the buffers directly.
    One op call per layer: each costs ~100 us on a CPU.
    """
    if torch.compiler.is_compiling() and _copy_reads:
        return tuple(_stats_snapshot(list(tensors)))
    return tensors


@contextlib.contextmanager
def gradients_traced_inline() -> Iterator[None]:
    """Trace without read_stats' copies: for a program that computes its gradients inside itself
    (`torch.autograd.grad` traced into it, as the fused update step does) and returns nothing
    that requires grad. Such a program has no backward graph for the partitioner to recompute
    into, so the buffers can be read directly; the copies cost ~0.4 ms of a 9 ms CrossQ update
    at 256 wide on a CPU. Only the trace reads the switch: the program keeps what it traced."""
    global _copy_reads
    _copy_reads = False
    try:
        yield
    finally:
        _copy_reads = True


def batch_moments(h: Tensor, running_mean: Tensor, group: ProcessGroup | None) -> tuple[Tensor, Tensor, Tensor, int]:
    """(mean, h − mean, biased variance, rows) of h over dim −2; with a process `group`, over the
    rows of every rank (shifted by the running mean, `synced_stats.global_moments`)."""
    if group is not None:
        mean, var, n = global_moments(h, read_stats(running_mean)[0].detach(), group)
        return mean, h - mean.unsqueeze(-2), var, n
    # Two passes (mean, then mean of squared deviations): exact like var_mean, and an
    # order of magnitude faster than var_mean's strided reduction on CPU.
    mean = h.mean(dim=-2)
    centered = h - mean.unsqueeze(-2)
    return mean, centered, (centered * centered).mean(dim=-2), h.shape[-2]


@torch.no_grad()
def renorm_factors(
    mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor, steps: Tensor, params: BrnParams
) -> tuple[Tensor, Tensor]:
    """r and d (constants for autograd) from the batch and the *current* running stats.

    r = 1, d = 0 while steps < warmup_steps, which makes BRN plain batch norm.
    """
    running_mean, running_var, steps = read_stats(running_mean, running_var, steps)
    running_std = torch.sqrt(running_var + params.eps)
    r = (torch.sqrt(var + params.eps) / running_std).clamp(1.0 / params.r_max, params.r_max)
    d = ((mean - running_mean) / running_std).clamp(-params.d_max, params.d_max)
    warm = steps < params.warmup_steps
    return torch.where(warm, 1.0, r), torch.where(warm, 0.0, d)


@torch.no_grad()
def update_running_stats(
    mean: Tensor, var: Tensor, n: int, running_mean: Tensor, running_var: Tensor, steps: Tensor, params: BrnParams
) -> None:
    """In-place update with torch.nn.BatchNorm's convention (unbiased variance, momentum on the new value)."""
    running_mean.lerp_(mean, params.momentum)
    running_var.lerp_(var * (n / (n - 1)), params.momentum)
    steps.add_(1)


def reference_train(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    params: BrnParams,
    relu: Relu = "none",
    group: ProcessGroup | None = None,
) -> Tensor:
    """y = γ·((h − μ_B)/σ_B·r + d) + β with h = x or relu(x), and the running-statistics update.

    With a process `group`, μ_B and σ_B are those of the batches of all its ranks together.
    """
    h = torch.relu(x) if relu == "input" else x
    mean, _, var, n = batch_moments(h, running_mean, group)
    r, d = renorm_factors(mean.detach(), var.detach(), running_mean, running_var, steps, params)
    update_running_stats(mean.detach(), var.detach(), n, running_mean, running_var, steps, params)
    # y = γ((h − μ)/σ·r + d) + β folded into y = h·scale + shift over [.., C] vectors:
    # one pass over the [N, C] activations instead of six, same autograd graph through μ, σ.
    scale = weight * r * torch.rsqrt(var + params.eps)
    return _affine(h, scale, bias + weight * d - mean * scale, relu)


def reference_eval(
    x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, params: BrnParams,
    relu: Relu = "none",
) -> Tensor:
    """y = γ·(h − running_mean)/√(running_var + eps) + β; nothing changes."""
    h = torch.relu(x) if relu == "input" else x
    running_mean, running_var = read_stats(running_mean, running_var)
    scale = weight * torch.rsqrt(running_var + params.eps)
    return _affine(h, scale, bias - running_mean * scale, relu)


def _affine(h: Tensor, scale: Tensor, shift: Tensor, relu: Relu) -> Tensor:
    y = torch.addcmul(shift.unsqueeze(-2), h, scale.unsqueeze(-2))
    return torch.relu(y) if relu == "output" else y
