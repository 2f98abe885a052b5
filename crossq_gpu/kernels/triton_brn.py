"""Fused Batch Renormalization in Triton: kernels → launchers → custom ops with autograd.

Forward and backward are each one reduction over N and one elementwise pass, with
h = relu(x) when the ReLU sits on the input side:

    forward   partial statistics, then mean, rstd, r, d;
              running stats updated                           (`train_stats`)
              y = act(scale · (h − mean) · rstd + shift)     (`brn_apply`)
    backward  g = dy · [y > 0] (output ReLU),  x̂ = (h − mean) · rstd
              Σg, Σg·x̂ per channel → dshift, dscale         (`brn_grad_sums`)
              dx = scale · rstd · (g − [batch] (Σg + x̂ Σg·x̂) / N) · [x > 0] (input ReLU)

`triton_train` (the dispatcher's entry) passes scale = γ·r and shift = γ·d + β, so torch autograd
turns dscale/dshift into dγ = r·Σg·x̂ + d·Σg and dβ = Σg, while r and d stay constants, as
docs/design.md §2 says. In training mode mean/rstd are the batch's, passed in detached, and
`batch=True` tells the backward they depend on x (the "− mean" terms of the BN gradient);
eval mode is the same op with the running statistics and `batch=False`.

Reductions over N are split across programs (rows_per_program rows each, in BLOCK_N tiles)
into [R, E, C] partials: per-program mean and M2 merged with Chan's parallel formula
(numerically safe, unlike Σx² − (Σx)²), per-program Σg and Σg·x̂. In the forward one
per-channel kernel combines the partials and does all the [C]-sized work — r, d, 1/σ_B and
the running-statistics update — so a training forward launches 3 kernels plus `steps += 1`
and the three small ops that form scale and shift, 7 in all instead of ~38, and the backward
6 instead of 9 (it matters eagerly and in a CUDA graph without torch.compile; under compile
Inductor would fuse that glue anyway). No atomics, so
results are deterministic. The ReLU is never materialised: it is recomputed from x.

Data parallel (a process group): the partials become shifted sums Σ(h − c), Σ(h − c)² that
one all-reduce adds over the ranks before the per-channel kernel, and the backward
all-reduces Σg, Σg·x̂ before dx — one collective each way per layer, as the torch paths.

torch.compile: the ops are `torch.library.triton_op`s that launch through `wrap_triton`,
with autograd registered by `register_autograd`, the route torch documents for tracing
user Triton kernels without graph breaks (Inductor then sees the kernels). Tested without a
GPU: the eager path under the interpreter against the reference; lowering of every kernel
to sm_90 cubin; and the compile route up to the launch — fullgraph tracing of forward and
backward, with torch's mutation analysis finding that each kernel writes only its outputs
and the running statistics (under TRITON_INTERPRET Dynamo cannot trace the kernels, so
that test builds them normally and gives Triton a target but no GPU). Running compiled
kernels needs a GPU: `benchmarks/gpu_check.sh`.
"""

import functools

import torch
import torch.distributed as dist
import triton
import triton.language as tl
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.library import triton_op, wrap_triton

from crossq_gpu.kernels.reference import BrnParams, Relu, read_stats
from crossq_gpu.kernels.synced_stats import sum_over_ranks

RELU_CODES = {"none": 0, "input": 1, "output": 2}


# --------------------------------------------------------------------------- kernels


@triton.jit
def _stats_kernel(
    x_ptr,  # [E, N, C] f32 input
    mean_ptr,  # [R, E, C] f32 out: mean of this program's rows
    m2_ptr,  # [R, E, C] f32 out: Σ (h − mean)² over this program's rows
    N,
    C,
    E,
    rows_per_program,
    RELU_INPUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_e = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x_ptr += pid_e.to(tl.int64) * N * C
    row_start = pid_r * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        h = tl.load(x_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0)
        if RELU_INPUT:
            h = tl.maximum(h, 0.0)
        # Chan et al.: merge this tile's (count, mean, M2) into the running one.
        n_prev = (start - row_start).to(tl.float32)
        n_tile = tl.minimum(row_end - start, BLOCK_N).to(tl.float32)
        tile_mean = tl.sum(h, axis=0) / n_tile
        dev = tl.where(mask, h - tile_mean[None, :], 0.0)
        delta = tile_mean - mean
        n_tot = n_prev + n_tile
        mean += delta * (n_tile / n_tot)
        m2 += tl.sum(dev * dev, axis=0) + delta * delta * (n_prev * n_tile / n_tot)
    out = (pid_r * E + pid_e) * C + cols
    tl.store(mean_ptr + out, mean, mask=col_mask)
    tl.store(m2_ptr + out, m2, mask=col_mask)


@triton.jit
def _finalize_stats_kernel(
    part_mean_ptr,  # [R, E, C] f32 per-program means (_stats_kernel)
    part_m2_ptr,  # [R, E, C] f32 per-program Σ (h − mean)²
    running_mean_ptr,  # [E, C] f32, updated in place
    running_var_ptr,  # [E, C] f32, updated in place
    steps_ptr,  # i64 scalar: BRN steps taken so far (the warmup switch)
    mean_ptr,  # [E, C] f32 out: batch mean
    rstd_ptr,  # [E, C] f32 out: 1/sqrt(batch var + eps)
    r_ptr,  # [E, C] f32 out: renorm factor r
    d_ptr,  # [E, C] f32 out: renorm factor d
    N,
    C,
    E,
    R,
    rows_per_program,
    momentum,
    eps,
    r_max,
    d_max,
    warmup_steps,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_e = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    chan = pid_e * C + cols
    n = N.to(tl.float32)
    # Combine the partials in two passes: the mean of the means, then Σ M2_r + n_r (mean_r − mean)².
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in range(0, R):
        n_r = tl.minimum(rows_per_program, N - r * rows_per_program).to(tl.float32)
        mean += n_r * tl.load(part_mean_ptr + (r * E + pid_e) * C + cols, mask=col_mask, other=0.0)
    mean = mean / n
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in range(0, R):
        n_r = tl.minimum(rows_per_program, N - r * rows_per_program).to(tl.float32)
        part = (r * E + pid_e) * C + cols
        delta = tl.load(part_mean_ptr + part, mask=col_mask, other=0.0) - mean
        m2 += tl.load(part_m2_ptr + part, mask=col_mask, other=0.0) + n_r * delta * delta
    var = m2 / n
    # r and d from the running statistics as they were before this batch.
    running_mean = tl.load(running_mean_ptr + chan, mask=col_mask, other=0.0)
    running_var = tl.load(running_var_ptr + chan, mask=col_mask, other=1.0)
    running_std = tl.sqrt(running_var + eps)
    r_factor = tl.minimum(tl.maximum(tl.sqrt(var + eps) / running_std, 1.0 / r_max), r_max)
    d_factor = tl.minimum(tl.maximum((mean - running_mean) / running_std, -d_max), d_max)
    warm = tl.load(steps_ptr) < warmup_steps
    tl.store(mean_ptr + chan, mean, mask=col_mask)
    tl.store(rstd_ptr + chan, 1.0 / tl.sqrt(var + eps), mask=col_mask)
    tl.store(r_ptr + chan, tl.where(warm, 1.0, r_factor), mask=col_mask)
    tl.store(d_ptr + chan, tl.where(warm, 0.0, d_factor), mask=col_mask)
    # torch.nn.BatchNorm's convention: unbiased variance, momentum on the new value.
    tl.store(running_mean_ptr + chan, running_mean + momentum * (mean - running_mean), mask=col_mask)
    unbiased = var * (n / (n - 1.0))
    tl.store(running_var_ptr + chan, running_var + momentum * (unbiased - running_var), mask=col_mask)


@triton.jit
def _apply_kernel(
    x_ptr,  # [E, N, C] f32 input
    y_ptr,  # [E, N, C] f32 out
    mean_ptr,  # [E, C] f32 centre (batch or running mean)
    rstd_ptr,  # [E, C] f32 1/sqrt(var + eps)
    scale_ptr,  # [E, C] f32 γ·r
    shift_ptr,  # [E, C] f32 γ·d + β
    N,
    C,
    RELU: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_e = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None] & col_mask[None, :]
    chan = pid_e * C + cols
    mean = tl.load(mean_ptr + chan, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + chan, mask=col_mask, other=0.0)
    scale = tl.load(scale_ptr + chan, mask=col_mask, other=0.0)
    shift = tl.load(shift_ptr + chan, mask=col_mask, other=0.0)
    offs = pid_e.to(tl.int64) * N * C + rows.to(tl.int64)[:, None] * C + cols[None, :]
    h = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if RELU == 1:
        h = tl.maximum(h, 0.0)
    y = (h - mean[None, :]) * (rstd * scale)[None, :] + shift[None, :]
    if RELU == 2:
        y = tl.maximum(y, 0.0)
    tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def _grad_sums_kernel(
    x_ptr,  # [E, N, C] f32 forward input
    dy_ptr,  # [E, N, C] f32 upstream gradient
    mean_ptr,  # [E, C] f32
    rstd_ptr,  # [E, C] f32
    scale_ptr,  # [E, C] f32
    shift_ptr,  # [E, C] f32
    sum_g_ptr,  # [R, E, C] f32 out: Σ g over this program's rows
    sum_gx_ptr,  # [R, E, C] f32 out: Σ g·x̂ over this program's rows
    N,
    C,
    E,
    rows_per_program,
    RELU: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_e = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    chan = pid_e * C + cols
    mean = tl.load(mean_ptr + chan, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + chan, mask=col_mask, other=0.0)
    scale = tl.load(scale_ptr + chan, mask=col_mask, other=0.0)
    shift = tl.load(shift_ptr + chan, mask=col_mask, other=0.0)
    base = pid_e.to(tl.int64) * N * C
    row_start = pid_r * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    sum_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_gx = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        offs = base + rows.to(tl.int64)[:, None] * C + cols[None, :]
        h = tl.load(x_ptr + offs, mask=mask, other=0.0)
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0)
        if RELU == 1:
            h = tl.maximum(h, 0.0)
        xhat = (h - mean[None, :]) * rstd[None, :]
        if RELU == 2:
            g = tl.where(xhat * scale[None, :] + shift[None, :] > 0.0, g, 0.0)
        sum_g += tl.sum(g, axis=0)
        sum_gx += tl.sum(g * xhat, axis=0)
    out = (pid_r * E + pid_e) * C + cols
    tl.store(sum_g_ptr + out, sum_g, mask=col_mask)
    tl.store(sum_gx_ptr + out, sum_gx, mask=col_mask)


@triton.jit
def _grad_input_kernel(
    x_ptr,  # [E, N, C] f32 forward input
    dy_ptr,  # [E, N, C] f32 upstream gradient
    dx_ptr,  # [E, N, C] f32 out
    mean_ptr,  # [E, C] f32
    rstd_ptr,  # [E, C] f32
    scale_ptr,  # [E, C] f32
    shift_ptr,  # [E, C] f32
    sum_g_ptr,  # [E, C] f32 Σg
    sum_gx_ptr,  # [E, C] f32 Σg·x̂
    N,
    C,
    n_total,  # rows the sums span: N, or N × ranks when they were all-reduced
    RELU: tl.constexpr,
    BATCH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_e = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None] & col_mask[None, :]
    chan = pid_e * C + cols
    mean = tl.load(mean_ptr + chan, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + chan, mask=col_mask, other=0.0)
    scale = tl.load(scale_ptr + chan, mask=col_mask, other=0.0)
    shift = tl.load(shift_ptr + chan, mask=col_mask, other=0.0)
    offs = pid_e.to(tl.int64) * N * C + rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.load(dy_ptr + offs, mask=mask, other=0.0)
    h = x
    if RELU == 1:
        h = tl.maximum(x, 0.0)
    xhat = (h - mean[None, :]) * rstd[None, :]
    if RELU == 2:
        g = tl.where(xhat * scale[None, :] + shift[None, :] > 0.0, g, 0.0)
    if BATCH:
        mean_g = tl.load(sum_g_ptr + chan, mask=col_mask, other=0.0) / n_total
        mean_gx = tl.load(sum_gx_ptr + chan, mask=col_mask, other=0.0) / n_total
        g = g - mean_g[None, :] - xhat * mean_gx[None, :]
    dx = g * (scale * rstd)[None, :]
    if RELU == 1:
        dx = tl.where(x > 0.0, dx, 0.0)
    tl.store(dx_ptr + offs, dx, mask=mask)


# --------------------------------------------------------------------------- launchers


@functools.cache
def _target_programs(device: torch.device) -> int:
    """Programs to aim for in a reduction: a few waves of SMs on CUDA; a handful in the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def launch_config(n: int, c: int, e: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, rows_per_program) for an [E, N, C] problem.

    On CUDA a tile holds ~4K elements, 128 channels wide (512 B coalesced rows). Elsewhere
    (the CPU interpreter, i.e. tests) tiles are 16 rows × ≤ 64 channels, so that small
    test shapes already need several row programs, several tiles per program and masks.
    """
    if device.type == "cuda":
        block_c = min(triton.next_power_of_2(c), 128)
        block_n = min(4096 // block_c, 256)
    else:
        block_c, block_n = min(triton.next_power_of_2(c), 64), 16
    tiles = triton.cdiv(n, block_n)
    row_programs = min(tiles, triton.cdiv(_target_programs(device), triton.cdiv(c, block_c) * e))
    return block_n, block_c, triton.cdiv(tiles, row_programs) * block_n


def _dims(x: Tensor) -> tuple[int, int, int]:
    """(E, N, C) of an [N, C] or [E, N, C] input."""
    return (1, *x.shape) if x.dim() == 2 else tuple(x.shape)  # type: ignore[return-value]


@triton_op("crossq_gpu::brn_partial_stats", mutates_args=())
def brn_partial_stats(x: Tensor, relu_input: bool) -> tuple[Tensor, Tensor]:
    """Per-program (mean, M2) [R, .., C] of h (= relu(x) if relu_input) over dim -2: the split reduction."""
    x = x.contiguous()
    e, n, c = _dims(x)
    block_n, block_c, rows_per_program = launch_config(n, c, e, x.device)
    r = triton.cdiv(n, rows_per_program)
    part_mean = x.new_empty((r, *x.shape[:-2], c))
    part_m2 = torch.empty_like(part_mean)
    wrap_triton(_stats_kernel)[(r, triton.cdiv(c, block_c), e)](
        x, part_mean, part_m2, n, c, e, rows_per_program,
        RELU_INPUT=relu_input, BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return part_mean, part_m2


@triton_op("crossq_gpu::brn_finalize_stats", mutates_args=("running_mean", "running_var", "steps"))
def brn_finalize_stats(
    part_mean: Tensor,
    part_m2: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    n: int,
    rows_per_program: int,
    momentum: float,
    eps: float,
    r_max: float,
    d_max: float,
    warmup_steps: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean, 1/σ_B, r, d) from R partials of rows_per_program rows each (n rows in all), the
    running-statistics update and `steps += 1`: one per-channel kernel where the composed ops
    take ~30 small ones."""
    if not (running_mean.is_contiguous() and running_var.is_contiguous()):
        raise ValueError("running_mean and running_var must be contiguous (they are updated in place)")
    c = running_mean.shape[-1]
    e = running_mean.numel() // c
    block_c = launch_config(n, c, e, running_mean.device)[1]
    mean, rstd, r_factor, d_factor = (torch.empty_like(running_mean) for _ in range(4))
    wrap_triton(_finalize_stats_kernel)[(triton.cdiv(c, block_c), e)](
        part_mean.contiguous(), part_m2.contiguous(), running_mean, running_var, steps, mean, rstd, r_factor,
        d_factor, n, c, e, part_mean.shape[0], rows_per_program, momentum, eps, r_max, d_max, warmup_steps,
        BLOCK_C=block_c,
    )
    steps.add_(1)
    return mean, rstd, r_factor, d_factor


@triton_op("crossq_gpu::brn_apply", mutates_args=())
def brn_apply(
    x: Tensor, mean: Tensor, rstd: Tensor, scale: Tensor, shift: Tensor, relu: str, batch: bool
) -> Tensor:
    """y = act(scale·(h − mean)·rstd + shift); `batch` says mean/rstd are x's own statistics."""
    x = x.contiguous()
    e, n, c = _dims(x)
    block_n, block_c, _ = launch_config(n, c, e, x.device)
    y = torch.empty_like(x)
    wrap_triton(_apply_kernel)[(triton.cdiv(n, block_n), triton.cdiv(c, block_c), e)](
        x, y, mean.contiguous(), rstd.contiguous(), scale.contiguous(), shift.contiguous(), n, c,
        RELU=RELU_CODES[relu], BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return y


@triton_op("crossq_gpu::brn_grad_sums", mutates_args=())
def brn_grad_sums(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, scale: Tensor, shift: Tensor, relu: str) -> Tensor:
    """[Σg; Σg·x̂] [2, .., C] of `brn_apply` over x's rows: its dshift and dscale, in one tensor."""
    x, dy = x.contiguous(), dy.contiguous()
    e, n, c = _dims(x)
    block_n, block_c, rows_per_program = launch_config(n, c, e, x.device)
    r = triton.cdiv(n, rows_per_program)
    parts = x.new_empty((2, r, *mean.shape))  # [Σg; Σg·x̂] per program: one buffer, one sum
    wrap_triton(_grad_sums_kernel)[(r, triton.cdiv(c, block_c), e)](
        x, dy, mean.contiguous(), rstd.contiguous(), scale.contiguous(), shift.contiguous(), parts[0], parts[1],
        n, c, e, rows_per_program, RELU=RELU_CODES[relu], BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return parts.sum(1)


@triton_op("crossq_gpu::brn_grad_input", mutates_args=())
def brn_grad_input(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    scale: Tensor,
    shift: Tensor,
    sums: Tensor,
    n_total: int,
    relu: str,
    batch: bool,
) -> Tensor:
    """dx of `brn_apply` from `brn_grad_sums`'s sums, taken over n_total rows."""
    x, dy, sums = x.contiguous(), dy.contiguous(), sums.contiguous()
    e, n, c = _dims(x)
    block_n, block_c, _ = launch_config(n, c, e, x.device)
    dx = torch.empty_like(x)
    wrap_triton(_grad_input_kernel)[(triton.cdiv(n, block_n), triton.cdiv(c, block_c), e)](
        x, dy, dx, mean.contiguous(), rstd.contiguous(), scale.contiguous(), shift.contiguous(), sums[0], sums[1],
        n, c, n_total, RELU=RELU_CODES[relu], BATCH=batch, BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return dx


# --------------------------------------------------------------------------- statistics over ranks


def _merge_over_ranks(
    part_mean: Tensor, part_m2: Tensor, n: int, rows_per_program: int, shift: Tensor, group: ProcessGroup
) -> tuple[Tensor, Tensor, int]:
    """Every rank's partials as one: (mean, M2) [1, .., C] over all n × ranks rows, and that count.

    Per rank Σ(h − c) = Σ_r n_r (mean_r − c) and Σ(h − c)² = Σ_r M2_r + n_r (mean_r − c)², with c
    the running mean (the same on every rank); one all-reduce adds them up, as in
    `synced_stats.global_moments`.
    """
    starts = rows_per_program * torch.arange(part_mean.shape[0], device=part_mean.device)
    counts = (n - starts).clamp(max=rows_per_program).to(part_mean.dtype).view(-1, *[1] * (part_mean.dim() - 1))
    dev = part_mean - shift
    sums = sum_over_ranks(torch.stack([(counts * dev).sum(0), (part_m2 + counts * dev * dev).sum(0)]), group)
    total = n * dist.get_world_size(group)
    mean_dev = sums[0] / total
    m2 = (sums[1] - total * mean_dev * mean_dev).clamp_min(0.0)
    return (shift + mean_dev).unsqueeze(0), m2.unsqueeze(0), total


def train_stats(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    relu_input: bool,
    params: BrnParams,
    group: ProcessGroup | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean, 1/σ_B, r, d) of h (= relu(x) if relu_input) over dim -2 — over every rank's rows
    with a `group`, whose all-reduce sits between the reduction and the per-channel kernel —
    and the running-statistics update. Not differentiable."""
    part_mean, part_m2 = brn_partial_stats(x, relu_input)
    e, n, c = _dims(x)
    rows_per_program = launch_config(n, c, e, x.device)[2]
    if group is not None:
        part_mean, part_m2, n = _merge_over_ranks(part_mean, part_m2, n, rows_per_program,
                                                  read_stats(running_mean)[0], group)
        rows_per_program = n
    return brn_finalize_stats(part_mean, part_m2, running_mean, running_var, steps, n, rows_per_program,
                              params.momentum, params.eps, params.r_max, params.d_max, params.warmup_steps)


# --------------------------------------------------------------------------- autograd


def _apply_grads(
    dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, scale: Tensor, shift: Tensor, relu: str, batch: bool,
    need_dx: bool, group: ProcessGroup | None,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(dx or None, dscale, dshift) of `brn_apply`. dscale and dshift are over x's rows (this
    rank's share); with a `group`, dx's "− mean" terms take Σg and Σg·x̂ over every rank's rows."""
    sums = brn_grad_sums(dy, x, mean, rstd, scale, shift, relu)
    dshift, dscale = sums.unbind(0)
    if not need_dx:  # the first critic layer's input needs no gradient: skip a full pass
        return None, dscale, dshift
    n = x.shape[-2]
    if group is not None:
        sums, n = sum_over_ranks(sums, group), n * dist.get_world_size(group)
    return brn_grad_input(dy, x, mean, rstd, scale, shift, sums, n, relu, batch), dscale, dshift


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, mean, rstd, scale, shift, relu, batch = inputs
    ctx.save_for_backward(x, mean, rstd, scale, shift)
    ctx.relu, ctx.batch = relu, batch


def _backward(ctx, dy: Tensor):  # type: ignore[no-untyped-def]
    dx, dscale, dshift = _apply_grads(dy, *ctx.saved_tensors, ctx.relu, ctx.batch, ctx.needs_input_grad[0], None)
    return dx, None, None, dscale, dshift, None, None


brn_apply.register_autograd(_backward, setup_context=_setup_context)


class _SyncedApply(torch.autograd.Function):
    """`brn_apply` on batch statistics of every rank of `group`: its backward all-reduces Σg, Σg·x̂."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, rstd: Tensor, scale: Tensor, shift: Tensor,  # type: ignore[override]
                relu: str, group: ProcessGroup) -> Tensor:
        ctx.save_for_backward(x, mean, rstd, scale, shift)
        ctx.relu, ctx.group = relu, group
        return brn_apply(x, mean, rstd, scale, shift, relu, True)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        dx, dscale, dshift = _apply_grads(dy, *ctx.saved_tensors, ctx.relu, True, ctx.needs_input_grad[0], ctx.group)
        return dx, None, None, dscale, dshift, None, None


# --------------------------------------------------------------------------- the dispatcher's entries


def triton_train(
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
    """`reference.reference_train` with the fused kernels: r and d stay constants for autograd,
    which turns dscale/dshift into dγ = r·Σg·x̂ + d·Σg and dβ = Σg."""
    mean, rstd, r, d = train_stats(x.detach(), running_mean, running_var, steps, relu == "input", params, group)
    scale, shift = weight * r, weight * d + bias
    if group is None:
        return brn_apply(x, mean, rstd, scale, shift, relu, True)
    return _SyncedApply.apply(x, mean, rstd, scale, shift, relu, group)


def triton_eval(
    x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, params: BrnParams,
    relu: Relu = "none",
) -> Tensor:
    """`reference.reference_eval` with the fused kernel."""
    centre, running_var = read_stats(running_mean, running_var)
    return brn_apply(x, centre, torch.rsqrt(running_var + params.eps), weight, bias, relu, False)
