"""CUDA-graph capture of a step function, for the update and the acting step (CUDA only).

Replaying a graph launches every kernel of the step with one call and no Python; random
numbers stay fresh on every replay because the CUDA generator's offset advances per replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class GraphedCall:
    """`fn(*static_inputs)` captured once; each call copies its inputs in and replays.

    The warm-up runs that capture needs (on a side stream) would otherwise train: every
    tensor in `state` is restored afterwards, and so is the CUDA RNG state, so capturing
    leaves the learner unchanged and the first replay draws what an eager step would.
    Outputs are the graph's static tensors: the next replay overwrites them, so a caller
    that keeps one past that (e.g. an action handed to JAX) must clone it.
    """

    def __init__(self, fn: Callable[..., Any], state: list[Tensor], static_inputs: tuple[Tensor, ...] = (),
                 warmup: int = 3) -> None:
        snapshot = [t.detach().clone() for t in state]
        rng = torch.cuda.get_rng_state()
        self.static_inputs = static_inputs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA calls (NCCL's watchdog, JAX) cannot break the capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = fn(*static_inputs)
        with torch.no_grad():
            for tensor, saved in zip(state, snapshot):
                tensor.copy_(saved)
        torch.cuda.set_rng_state(rng)

    def __call__(self, *inputs: Tensor) -> Any:
        for static, value in zip(self.static_inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return self.outputs
