"""CUDA-graph capture (`capture.GraphedCall`): what it does to the state and the RNG, checked on a
CPU with a stand-in graph; and, on a GPU, the captured update and acting step against eager ones.

The CUDA tests carry the `cuda` marker (`pytest -m cuda` selects them on a GPU node) and skip
with a reason elsewhere.
"""

from collections.abc import Callable
from contextlib import nullcontext

import pytest
import torch

from crossq_gpu.capture import GraphedCall
from crossq_gpu.networks import build_agent
from crossq_gpu.update import Update
from tests.factories import N_ACTIONS, OBS, B, small_config, small_update

CUDA = torch.cuda.is_available()


def needs_cuda(test: Callable) -> Callable:
    """Marked `cuda`, and skipped with a reason where there is no CUDA device."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA device")(test))


def seeded(*overrides: str, algo: str = "CrossQ", device: str = "cpu") -> Update:
    """`small_update` from seed 0: two of them start from the same weights and buffer."""
    torch.manual_seed(0)
    return small_update(f"run.device={device}", *overrides, algo=algo, device=device)


# --- GraphedCall on a CPU, with a stand-in for torch.cuda.CUDAGraph ------------------------


class StubStream:
    def wait_stream(self, other: object) -> None:
        pass


def test_capture_restores_state_and_rng_and_replays_into_its_static_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up and capture run a step that trains (it changes `weight`) and draws noise: after
    construction both are as before, so the first replay is the step an eager call would take,
    written into the static output; replays copy their inputs into the static inputs first."""
    weight = torch.ones(3)

    def step(x: torch.Tensor) -> torch.Tensor:
        weight.add_(x)
        return weight * torch.rand(3)

    modes = []

    class StubGraph:  # a replay runs the step again, eagerly, on the static tensors
        def replay(self) -> None:
            graphed.outputs.copy_(step(*graphed.static_inputs))

    def graph(cuda_graph: StubGraph, capture_error_mode: str) -> nullcontext:
        modes.append(capture_error_mode)
        return nullcontext()

    stubs = {"get_rng_state": torch.get_rng_state, "set_rng_state": torch.set_rng_state, "Stream": StubStream,
             "current_stream": StubStream, "stream": lambda stream: nullcontext(), "CUDAGraph": StubGraph,
             "graph": graph}
    for name, stub in stubs.items():
        monkeypatch.setattr(torch.cuda, name, stub)
    torch.manual_seed(5)
    eager_noise = torch.rand(3)
    torch.manual_seed(5)
    static = torch.ones(3)
    graphed = GraphedCall(step, state=[weight], static_inputs=(static,), warmup=2)
    assert torch.equal(weight, torch.ones(3)), "the three runs of warm-up and capture trained"
    assert modes == ["thread_local"]
    captured = graphed.outputs
    out = graphed(torch.full((3,), 2.0))
    assert out is captured and torch.equal(static, torch.full((3,), 2.0))
    torch.testing.assert_close(out, 3.0 * eager_noise, rtol=0, atol=0)
    assert torch.equal(weight, torch.full((3,), 3.0))
    out = graphed(torch.zeros(3))
    assert out is captured and torch.equal(weight, torch.full((3,), 3.0))


# --- the captured update and acting step (CUDA) ------------------------------------------


def test_cuda_graphs_on_a_cpu_update_run_eagerly_with_fused_adam() -> None:
    update = seeded("run.cuda_graphs=true")
    for _ in range(3):
        metrics = update.step()
    assert not update._graphs and torch.isfinite(metrics["actor_loss"])
    assert {adam_kind(opt) for opt in (update.critic_opt, update.actor_opt, update.alpha_opt)} == {"fused"}


def adam_kind(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return "fused" if d["fused"] else "capturable foreach" if d["capturable"] and d["foreach"] else "other"


def assert_same_training(reference: Update, other: Update, rtol: float, atol: float) -> None:
    """Six steps on one fixed batch with the same seed before each (two of each graph; across the
    BRN warmup of 2 steps): the same metrics at every step and the same weights at the end."""
    batch = reference.buffer.sample(B)
    for update in (reference, other):
        update.buffer.sample = lambda n: batch  # type: ignore[method-assign]
    for step in range(6):
        metrics = []
        for update in (reference, other):
            torch.manual_seed(100 + step)
            metrics.append({k: v.clone() for k, v in update.step().items()})
        for key in metrics[0]:
            torch.testing.assert_close(metrics[1][key], metrics[0][key], rtol=rtol, atol=atol, msg=key)
    for (name, want), got in zip(reference.agent.state_dict().items(), other.agent.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=name)


@needs_cuda
@pytest.mark.parametrize("algo", ["CrossQ", "SAC"])
def test_captured_update_equals_eager_on_a_fixed_batch(algo: str) -> None:
    """The replayed CUDA graphs (the critic-only and the actor-step one) train exactly like the
    eager step; the eager step's Adam is fused, the captured one's capturable foreach."""
    eager = seeded("run.cuda_graphs=false", algo=algo, device="cuda")
    graphed = seeded("run.cuda_graphs=true", algo=algo, device="cuda")
    assert_same_training(eager, graphed, rtol=1e-5, atol=1e-6)
    assert set(graphed._graphs) == {False, True}
    assert (adam_kind(eager.critic_opt), adam_kind(graphed.critic_opt)) == ("fused", "capturable foreach")


@needs_cuda
@torch._inductor.config.patch(fallback_random=True)
def test_learner_cuda_path_equals_eager_reference(fresh_dynamo: None) -> None:
    """The learner's CUDA default all at once — compiled losses with the Triton BRN kernels inside,
    the whole step captured as CUDA graphs, capturable Adam — trains like the eager torch reference
    with fused Adam. fallback_random: Inductor draws from torch's generator, so both see one noise."""
    reference = seeded("run.cuda_graphs=false", "agent.critic_net.batch_renorm.impl=torch", device="cuda")
    fast = seeded("run.compile=true", "run.cuda_graphs=true", "agent.critic_net.batch_renorm.impl=triton",
                  device="cuda")
    assert_same_training(reference, fast, rtol=1e-4, atol=1e-5)
    assert set(fast._graphs) == {False, True}
    assert int(fast.agent.state_dict()["critic.mlp.norms.0.steps"]) == 6


@needs_cuda
def test_captured_replay_has_no_host_sync() -> None:
    update = seeded("run.cuda_graphs=true", device="cuda")
    for _ in range(3):  # captures both graphs
        update.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):
            update.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_cuda
def test_discrete_acting_captures_without_host_sync() -> None:
    """The acting step the learner captures, for a discrete policy: capture works (a host sync
    inside it would fail), replays never sync, and every replay draws new actions."""
    agent = build_agent(small_config(), OBS, None, N_ACTIONS).cuda()
    obs = torch.randn(256, OBS, device="cuda")
    act = GraphedCall(lambda o: agent.act(o, deterministic=False), state=[], static_inputs=(torch.zeros_like(obs),))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        draws = [act(obs).clone() for _ in range(2)] + [agent.act(obs, deterministic=False)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not torch.equal(draws[0], draws[1])
    assert all(((0 <= a) & (a < N_ACTIONS)).all() for a in draws)
