"""Test set-up that must happen before any kernel module is imported.

TRITON_INTERPRET=1 has to be in the environment before `@triton.jit` decorates the
kernels, so that the Triton path runs on CPU tensors. The Brax adapter's CPU XLA flags have
to be in it before a test module starts JAX, and MUJOCO_GL before anything imports MuJoCo.
"""

import os
from collections.abc import Iterator

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
import torch

from crossq_gpu.envs.brax import set_cpu_xla_flags, set_offscreen_gl

set_cpu_xla_flags()
set_offscreen_gl()  # MuJoCo picks its GL platform once, at import: offscreen EGL for the render tests

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small nets beside XLA on 2 cores: a second torch thread only spins (~10x slower when busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Compiled losses are shared by every Update of the same structure: keep a test's out of the others."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
