"""The Triton Batch Renormalization kernels against the torch reference.

Runs under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it), where the launcher
uses 16-row tiles, so N = 33 and N = 1031 already span several row programs, several tiles
per program and a masked last tile; C = 5 and 256 exercise masked and multiple channel
blocks. `test_kernels_compile_for_sm90` compiles the real kernels, which the interpreter
alone would not prove, and `test_triton_path_traces_under_torch_compile` traces them
through torch.compile up to the launch. On a GPU, `TRITON_INTERPRET=0 pytest tests/test_triton_brn.py` runs
the same tests on CUDA tensors with the compiled kernels.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import Tensor

from crossq_gpu.buffer import Batch
from crossq_gpu.kernels import BrnParams, batch_renorm, triton_brn
from tests.factories import ACT, OBS, B, small_update
from tests.fixed_batches import FixedBatches

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = not INTERPRET and torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not (INTERPRET or ON_GPU), reason="needs TRITON_INTERPRET=1 or a CUDA device")

dispatch = sys.modules["crossq_gpu.kernels.batch_renorm"]


@pytest.fixture(autouse=True)
def _kernel_device():
    """Every tensor a test makes lives where the kernels run: CUDA on a GPU, else the CPU (interpreter)."""
    with torch.device("cuda" if ON_GPU else "cpu"):
        yield
PARAMS = BrnParams(momentum=0.1, eps=1e-3, r_max=3.0, d_max=5.0, warmup_steps=1)


def clipping_case(shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """x and running stats where channel k % 5 clips r high, r low, d high, d low, or nothing."""
    c = shape[-1]
    kind = torch.arange(c) % 5
    std = torch.tensor([10.0, 0.05, 1.0, 1.0, 1.3])[kind]
    mean = torch.tensor([0.0, 0.0, 20.0, -20.0, 0.4])[kind]
    running_var = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.2])[kind].expand(shape[:-2] + (c,))
    running_mean = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1])[kind].expand(shape[:-2] + (c,))
    return torch.randn(shape) * std + mean, running_mean.clone(), running_var.clone()


def run(impl: str, x0: Tensor, rm: Tensor, rv: Tensor, steps: int, g: Tensor, **kw: object) -> list[Tensor]:
    """One call of batch_renorm with fresh copies of every input; returns outputs, grads, state."""
    x = x0.clone().requires_grad_()
    weight = torch.linspace(-1.5, 2.0, x.shape[-1]).expand(rm.shape).clone().requires_grad_()
    bias = torch.linspace(-0.5, 0.5, x.shape[-1]).expand(rm.shape).clone().requires_grad_()
    state = (rm.clone(), rv.clone(), torch.tensor(steps))
    y = batch_renorm(x, weight, bias, *state, PARAMS, impl=impl, **kw)  # type: ignore[arg-type]
    dx, dw, db = torch.autograd.grad(y, (x, weight, bias), g)
    return [y, dx, dw, db, *state]


def assert_matches(x: Tensor, rm: Tensor, rv: Tensor, steps: int, **kw: object) -> None:
    g = torch.randn(x.shape)
    names = ("y", "dx", "dweight", "dbias", "running_mean", "running_var", "steps")
    triton_out, torch_out = run("triton", x, rm, rv, steps, g, **kw), run("torch", x, rm, rv, steps, g, **kw)
    for name, got, want in zip(names, triton_out, torch_out):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("relu", ["none", "input", "output"])
@pytest.mark.parametrize("steps", [0, 1], ids=["warmup", "renorm"])
@pytest.mark.parametrize("c", [1, 5])
@pytest.mark.parametrize("n", [2, 7, 33, 1031])
def test_train_matches_reference(n: int, c: int, steps: int, relu: str) -> None:
    assert_matches(*clipping_case((n, c)), steps, training=True, relu=relu)


@pytest.mark.parametrize("relu", ["none", "input", "output"])
@pytest.mark.parametrize("n", [33, 1031])
def test_train_matches_reference_wide(n: int, relu: str) -> None:
    assert_matches(*clipping_case((n, 256)), 1, training=True, relu=relu)


@pytest.mark.parametrize("relu", ["none", "input", "output"])
@pytest.mark.parametrize("n", [1, 33])
def test_eval_matches_reference(n: int, relu: str) -> None:
    assert_matches(*clipping_case((n, 5)), 3, training=False, relu=relu)


@pytest.mark.parametrize("training", [True, False])
def test_ensemble_matches_reference(training: bool) -> None:
    assert_matches(*clipping_case((3, 33, 5)), 1, training=training, relu="output")


def test_no_input_grad_skips_dx() -> None:
    """The first critic layer sees a batch that needs no gradient: only dweight/dbias run."""
    x, rm, rv = clipping_case((33, 5))
    got, want = [], []
    for impl, out in (("triton", got), ("torch", want)):
        w = torch.ones(5, requires_grad=True)
        y = batch_renorm(x, w, torch.zeros(5), rm.clone(), rv.clone(), torch.tensor(1), PARAMS,
                         training=True, impl=impl)  # type: ignore[arg-type]
        out.append(torch.autograd.grad(y.square().sum(), w)[0])
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)


def test_large_batch_statistics_are_exact() -> None:
    """33,000 rows with |mean| ≫ std: Chan's merge keeps the variance (Σx² − (Σx)² would not)."""
    x = torch.randn(33_000, 3, dtype=torch.float64) * torch.tensor([1e-2, 1.0, 3.0], dtype=torch.float64)
    x = x + torch.tensor([1e3, -50.0, 0.0], dtype=torch.float64)
    # momentum 1 from zeros: the running statistics become the batch's (unbiased variance).
    running_mean, running_var = torch.zeros(3), torch.zeros(3)
    mean, rstd, _, _ = triton_brn.train_stats(x.float(), running_mean, running_var, torch.tensor(0), False,
                                              BrnParams(momentum=1.0, eps=1e-3, r_max=3.0, d_max=5.0, warmup_steps=0))
    exact = x.float().double()
    torch.testing.assert_close(mean.double(), exact.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_mean.double(), exact.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_var.double(), exact.var(0), rtol=1e-3, atol=0)
    torch.testing.assert_close(rstd.double(), (exact.var(0, correction=0) + 1e-3).rsqrt(), rtol=1e-4, atol=0)


def test_launch_config_splits_large_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_brn, "_target_programs", lambda device: 4 * 132)
    for n, c, e in [(131_072, 2048, 1), (32_768, 256, 2), (512, 1024, 1), (1, 1, 1)]:
        block_n, block_c, rows_per_program = triton_brn.launch_config(n, c, e, torch.device("cuda"))
        row_programs = -(-n // rows_per_program)
        assert block_c <= 128 and block_n * block_c <= 4096 and rows_per_program % block_n == 0
        assert row_programs * rows_per_program >= n > (row_programs - 1) * rows_per_program
        if n >= 32_768:
            assert row_programs >= 8, "the batch reduction must be split across programs"


def test_auto_dispatch_uses_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("Triton path taken for a CPU tensor with impl='auto'")

    monkeypatch.setattr(dispatch.triton_brn, "brn_apply", fail)
    with torch.device("cpu"):
        x, rm, rv = clipping_case((8, 5))
        batch_renorm(x, torch.ones(5), torch.zeros(5), rm, rv, torch.tensor(0), PARAMS, training=True)


def test_crossq_update_with_triton_equals_reference() -> None:
    """Four CrossQ steps (two in warmup, two renormalising; actor every step) on fixed batches:
    the Triton critic and the torch-reference critic end with the same weights and statistics.
    Eager steps: a CUDA graph would replay the one batch it captured, not the next one."""
    device = torch.device("cuda" if ON_GPU else "cpu")
    gen = torch.Generator(device).manual_seed(1)
    batches = [Batch(torch.randn(B, OBS, generator=gen, device=device),
                     torch.rand(B, ACT, generator=gen, device=device),
                     torch.randn(B, generator=gen, device=device), torch.randn(B, OBS, generator=gen, device=device),
                     torch.zeros(B, device=device), None, torch.arange(B, device=device)) for _ in range(4)]
    finals = []
    for impl in ("triton", "torch"):
        torch.manual_seed(0)
        update = small_update(f"agent.critic_net.batch_renorm.impl={impl}", "agent.algorithm.policy_delay=1",
                              "run.cuda_graphs=false", device=device.type)
        update.buffer = FixedBatches(batches)
        torch.manual_seed(2)  # the same policy noise for both
        for _ in batches:
            update.step()
        finals.append(update.agent.state_dict())
    assert int(finals[0]["critic.mlp.norms.0.steps"]) == 4
    for name, want in finals[1].items():
        torch.testing.assert_close(finals[0][name], want, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from crossq_gpu.kernels import triton_brn as k

variants = {
    k._stats_kernel: [dict(RELU_INPUT=r) for r in (False, True)],
    k._finalize_stats_kernel: [dict()],
    k._apply_kernel: [dict(RELU=r) for r in (0, 1, 2)],
    k._grad_sums_kernel: [dict(RELU=r) for r in (0, 1, 2)],
    k._grad_input_kernel: [dict(RELU=r, BATCH=b) for r in (0, 1, 2) for b in (False, True)],
}
FLOATS = {"momentum", "eps", "r_max", "d_max"}
for fn, constexprs in variants.items():
    for consts in constexprs:
        consts = dict(consts, BLOCK_N=32, BLOCK_C=128)
        consts = {name: v for name, v in consts.items() if name in fn.arg_names}
        sig = {a: "constexpr" if a in consts else "*i64" if a == "steps_ptr" else "*fp32" if a.endswith("_ptr")
               else "fp32" if a in FLOATS else "i32" for a in fn.arg_names}
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
print("compiled", sum(map(len, variants.values())))
"""


def test_kernels_compile_for_sm90() -> None:
    """Lower every kernel variant to a Hopper cubin (no GPU needed), in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                             cwd=Path(__file__).parents[1], timeout=300)
    if "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("this triton install has no ptxas")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled 15" in out.stdout


TRACE_SCRIPT = """
import os
import torch, triton
import torch._functorch.config
from torch._dynamo.backends.common import aot_autograd
from triton.backends.compiler import GPUTarget


class TargetOnly:  # enough of a Triton driver for torch's kernel-mutation analysis (sm_90 TTIR)
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(TargetOnly())
from crossq_gpu.kernels import BrnParams, batch_renorm, triton_brn

triton_brn._target_programs = lambda device: 16
os.environ["TRITON_INTERPRET"] = "1"  # after the kernels were built: only lets the dispatcher pick Triton on CPU
torch._functorch.config.force_non_lazy_backward_lowering = True
graphs = {}


def keep(name):
    def compiler(gm, example_inputs):
        graphs[name] = gm
        return gm
    return compiler


PARAMS = BrnParams(warmup_steps=0)


def layer(x, w, b, rm, rv, steps):
    return batch_renorm(x, w, b, rm, rv, steps, PARAMS, training=True, relu="input", impl="triton").sum()


fn = torch.compile(layer, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")), fullgraph=True)
try:  # traced and partitioned before it runs; running needs a GPU
    fn(torch.randn(64, 32, requires_grad=True), torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True),
       torch.zeros(32), torch.ones(32), torch.zeros((), dtype=torch.long))
except Exception as err:
    print("run stopped:", type(err).__name__)
for name in sorted(graphs):
    for node in graphs[name].graph.nodes:
        if "triton_kernel_wrapper" in str(node.target):
            print(name, node.kwargs["kernel_idx"], sorted(user.args[1] for user in node.users))
"""


@pytest.mark.skipif(ON_GPU, reason="on a GPU the compiled Triton path runs for real (tests/test_capture.py)")
def test_triton_path_traces_under_torch_compile() -> None:
    """torch.compile(fullgraph=True) traces a training BRN call through the triton_ops, forward and
    backward, and torch's mutation analysis finds each kernel writing only its outputs (plus the
    running statistics): no graph break, and no defensive copies of x or dy. Runs without a GPU:
    tracing needs only Triton's TTIR, never a launch."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", TRACE_SCRIPT], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    written = [line.split(" ", 2)[::2] for line in out.stdout.splitlines() if line.startswith(("fw ", "bw "))]
    assert written == [
        ["bw", "['sum_g_ptr', 'sum_gx_ptr']"],
        ["bw", "['dx_ptr']"],
        ["fw", "['m2_ptr', 'mean_ptr']"],
        ["fw", "['d_ptr', 'mean_ptr', 'r_ptr', 'rstd_ptr', 'running_mean_ptr', 'running_var_ptr']"],
        ["fw", "['y_ptr']"],
    ], out.stdout + out.stderr[-2000:]
