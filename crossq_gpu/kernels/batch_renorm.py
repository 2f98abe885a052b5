"""Batch Renormalization: the `batch_renorm` dispatcher and the `BatchRenorm1d` modules.

`batch_renorm` picks the implementation (Triton on CUDA, torch ops with a hand-written
backward elsewhere, the composed torch reference on request), casts to float32 with
autocast off (BRN in bf16/fp16 is a known NaN source), validates shapes, and looks the
function up in `TRAIN` / `EVAL`. The torch paths share `reference.renorm_factors` /
`update_running_stats`; the Triton path does the same math in one per-channel kernel
(`triton_brn.train_stats`), held to them by tests/test_triton_brn.py. Every training path
takes its statistics over a process group's ranks when given one.
"""

import os
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from crossq_gpu.kernels.reference import BrnParams, Relu, reference_eval, reference_train
from crossq_gpu.kernels.torch_brn import batch_renorm_train

try:
    from crossq_gpu.kernels import triton_brn
except ModuleNotFoundError as err:  # Triton is optional on CPU-only installs.
    if err.name != "triton":
        raise
    triton_brn = None  # type: ignore[assignment]

Impl = Literal["auto", "torch", "torch_fast", "triton"]
# (x, weight, bias, running_mean, running_var, steps, params, relu, group) -> y; updates the statistics.
TrainPath = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, BrnParams, Relu, ProcessGroup | None], Tensor]
# (x, weight, bias, running_mean, running_var, params, relu) -> y; changes nothing.
EvalPath = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, BrnParams, Relu], Tensor]

# What each implementation runs; eval is one pass, so torch_fast has nothing to hand-write there.
TRAIN: dict[str, TrainPath] = {"torch": reference_train, "torch_fast": batch_renorm_train}
EVAL: dict[str, EvalPath] = {"torch": reference_eval, "torch_fast": reference_eval}
if triton_brn is not None:
    TRAIN["triton"], EVAL["triton"] = triton_brn.triton_train, triton_brn.triton_eval


def _resolve(x: Tensor, impl: Impl) -> str:
    """The implementation that runs: auto is Triton on CUDA tensors and torch_fast elsewhere."""
    if impl == "auto":
        return "triton" if x.is_cuda and "triton" in TRAIN else "torch_fast"
    if impl not in get_args(Impl):
        raise ValueError(f"impl must be 'auto', 'torch', 'torch_fast' or 'triton', got {impl!r}")
    if impl not in TRAIN:
        raise ValueError(f"impl={impl!r} needs the triton package")
    if impl == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl='triton' on non-CUDA tensors needs TRITON_INTERPRET=1 (tests only)")
    return impl


def _check(x: Tensor, per_channel: dict[str, Tensor], training: bool, relu: str) -> None:
    if x.dim() not in (2, 3):
        raise ValueError(f"expected an [N, C] or [E, N, C] input, got shape {list(x.shape)}")
    want = x.shape[:-2] + x.shape[-1:]
    for name, t in per_channel.items():
        if t.shape != want:
            raise ValueError(f"{name} has shape {list(t.shape)}, expected {list(want)} for input {list(x.shape)}")
    if relu not in get_args(Relu):
        raise ValueError(f"relu must be 'none', 'input' or 'output', got {relu!r}")
    if training and x.shape[-2] < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {list(x.shape)}"
        )


def batch_renorm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    steps: Tensor,
    params: BrnParams,
    *,
    training: bool,
    relu: Relu = "none",
    impl: Impl = "auto",
    group: ProcessGroup | None = None,
) -> Tensor:
    """Batch Renormalization (docs/design.md §2) of x [N, C] or [E, N, C] over dim -2, fused with a ReLU.

    relu="input": y = BRN(relu(x)) (Linear → ReLU → BRN); relu="output": y = relu(BRN(x)).
    In training mode running_mean/running_var/steps are updated in place. Output is float32.
    impl: "torch" is the composed reference (the test oracle), "torch_fast" the same function
    with a hand-written backward (the default off CUDA), "triton" the fused kernels (the
    default on CUDA); "auto" picks by device.
    group: in training, take the batch statistics over the batches of every rank of this
    process group (data-parallel training): one all-reduce per layer forward, one backward.
    """
    _check(
        x,
        {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var},
        training,
        relu,
    )
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        chosen = _resolve(x, impl)
        if training:
            return TRAIN[chosen](x, weight, bias, running_mean, running_var, steps, params, relu, group)
        return EVAL[chosen](x, weight, bias, running_mean, running_var, params, relu)


class BatchRenorm1d(nn.Module):
    """Batch Renormalization layer (Ioffe 2017) as CrossQ uses it; see docs/design.md §2.

    With `ensemble_size=E` every tensor gets a leading E dimension and the layer normalises
    an [E, N, C] input as E independent layers (one per critic of a batched ensemble).
    `impl` and `process_group` are plain attributes, so a benchmark, config or the
    data-parallel setup (`distributed.sync_batch_renorm`) can switch them after construction.
    """

    def __init__(
        self,
        num_features: int,
        params: BrnParams = BrnParams(),
        *,
        relu: Relu = "none",
        ensemble_size: int | None = None,
        impl: Impl = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.params = params
        self.relu: Relu = relu
        self.ensemble_size = ensemble_size
        self.impl: Impl = impl
        self.process_group: ProcessGroup | None = None
        shape = self._param_shape()
        self.weight = nn.Parameter(torch.empty(shape, device=device))
        self.bias = nn.Parameter(torch.empty(shape, device=device))
        self.register_buffer("running_mean", torch.empty(shape, device=device))
        self.register_buffer("running_var", torch.empty(shape, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def _param_shape(self) -> tuple[int, ...]:
        c = self.num_features
        return (c,) if self.ensemble_size is None else (self.ensemble_size, c)

    def reset_parameters(self) -> None:
        """γ = 1, β = 0, running stats of a standard normal, warmup restarted."""
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.steps.zero_()

    def forward(self, x: Tensor, training: bool | None = None) -> Tensor:
        """`training` overrides the module mode, so callers can set it per call site."""
        return batch_renorm(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.steps, self.params,
            training=self.training if training is None else training, relu=self.relu, impl=self.impl,
            group=self.process_group,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, {self.params}, relu={self.relu!r}, "
            f"ensemble_size={self.ensemble_size}, impl={self.impl!r}"
        )


class LazyBatchRenorm1d(LazyModuleMixin, BatchRenorm1d):
    """`BatchRenorm1d` whose num_features is taken from the last dim of the first input."""

    cls_to_become = BatchRenorm1d
    weight: UninitializedParameter  # type: ignore[assignment]
    bias: UninitializedParameter  # type: ignore[assignment]

    def __init__(
        self,
        params: BrnParams = BrnParams(),
        *,
        relu: Relu = "none",
        ensemble_size: int | None = None,
        impl: Impl = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(0, params, relu=relu, ensemble_size=ensemble_size, impl=impl, device=device)
        self.weight = UninitializedParameter(device=device, dtype=torch.float32)
        self.bias = UninitializedParameter(device=device, dtype=torch.float32)
        self.running_mean = UninitializedBuffer(device=device, dtype=torch.float32)
        self.running_var = UninitializedBuffer(device=device, dtype=torch.float32)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            self.num_features = x.shape[-1]
            for t in (self.weight, self.bias, self.running_mean, self.running_var):
                t.materialize(self._param_shape())
            self.reset_parameters()
