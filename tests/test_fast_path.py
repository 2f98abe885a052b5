"""The fast path: fresh noise under compile, CUDA-graph capture, bf16 autocast.

The CUDA tests run on a GPU and skip with a reason elsewhere; everything else runs on CPU.
"""

import pytest
import torch

from crossq_gpu.buffer import ReplayBuffer
from crossq_gpu.config import build_config
from crossq_gpu.kernels import BatchRenorm1d
from crossq_gpu.networks import StackedLinear, build_agent
from crossq_gpu.update import Update, target_entropy

OBS, ACT, B = 5, 2, 16
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(device: str = "cpu", algo: str = "CrossQ", extra: tuple[str, ...] = ()) -> Update:
    """A small update (critics and actor 32×2, batch 16) on a buffer of 64 random transitions."""
    torch.manual_seed(0)
    cfg, _ = build_config("cpu", False, overrides=[
        f"agent.algorithm.name={algo}", "agent.critic_net.hidden=[32, 32]", "agent.net.hidden=[32, 32]",
        f"agent.memory.batch_size={B}", "agent.critic_net.batch_renorm.warmup_steps=2", "run.compile=false",
        f"run.device={device}", *extra])
    dev = torch.device(device)
    agent = build_agent(cfg, OBS, ACT, None).to(dev)
    buffer = ReplayBuffer(OBS, (ACT,), max_size=256, num_envs=8, device=dev)
    for _ in range(8):
        buffer.add(torch.randn(8, OBS, device=dev), torch.rand(8, ACT, device=dev) * 2 - 1, torch.randn(8, device=dev),
                   torch.randn(8, OBS, device=dev), (torch.rand(8, device=dev) < 0.1).float())
    return Update(agent, buffer, cfg, target_entropy(cfg, ACT, None), dev)


# --- noise under torch.compile -----------------------------------------------------------


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    """Compiled losses are shared by every Update of the same structure: keep ours out of other tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@torch._inductor.config.patch(fallback_random=False)
def test_compiled_losses_draw_fresh_noise_every_call(fresh_dynamo: None) -> None:
    """Same batch, same parameters, two calls: a' ~ π(s') and ã ~ π(s) must differ.

    Inductor's own RNG (fallback_random off, the default) is what the learner runs; a
    compiled graph that baked its noise in would return identical losses.
    """
    update = make(extra=("run.compile=true", "agent.critic_net.batch_renorm.warmup_steps=1000"))
    batch = update.buffer.sample(B)
    critic = [update.critic_losses(batch)[0].detach() for _ in range(2)]
    actor = [update.policy_losses(batch)[1]["actor_loss"] for _ in range(2)]
    assert not torch.equal(*critic), "critic loss repeated: a' noise is stale"
    assert not torch.equal(*actor), "actor loss repeated: ã noise is stale"


def test_consecutive_compiled_steps_sample_new_batches(fresh_dynamo: None) -> None:
    update = make(extra=("run.compile=true",))
    seen = []
    update.buffer.sample = lambda n, sample=update.buffer.sample: seen.append(sample(n)) or seen[-1]  # type: ignore[method-assign]
    update.step()
    update.step()
    assert not torch.equal(seen[0].indices, seen[1].indices)


# --- CUDA-only paths ---------------------------------------------------------------------


def test_cuda_only_paths_import_and_fall_back_on_cpu() -> None:
    """capture.py imports without CUDA, and cuda_graphs=true on a CPU update runs eagerly."""
    from crossq_gpu.capture import GraphedCall

    assert callable(GraphedCall)
    update = make(extra=("run.cuda_graphs=true",))
    for _ in range(3):
        metrics = update.step()
    assert not update._graphs and torch.isfinite(metrics["actor_loss"])


@needs_cuda
@pytest.mark.parametrize("algo", ["CrossQ", "SAC"])
def test_captured_update_equals_eager_on_a_fixed_batch(algo: str) -> None:
    """Same init, same fixed batch, same seed before each step: the replayed CUDA graph trains
    exactly like the eager step (both the critic-only and the actor-step graphs)."""
    updates = [make("cuda", algo, ("run.cuda_graphs=false",)), make("cuda", algo, ("run.cuda_graphs=true",))]
    batch = updates[0].buffer.sample(B)
    for update in updates:
        update.buffer.sample = lambda n: batch  # type: ignore[method-assign]
    for step in range(6):  # two of each graph; crosses BRN warmup (2 steps)
        metrics = []
        for update in updates:
            torch.manual_seed(100 + step)
            metrics.append({k: v.clone() for k, v in update.step().items()})
        for key in metrics[0]:
            torch.testing.assert_close(metrics[1][key], metrics[0][key], rtol=1e-5, atol=1e-6, msg=key)
    assert set(updates[1]._graphs) == {False, True}
    for (name, eager), graphed in zip(updates[0].agent.state_dict().items(), updates[1].agent.state_dict().values()):
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-6, msg=name)


@needs_cuda
def test_captured_replay_has_no_host_sync() -> None:
    update = make("cuda", extra=("run.cuda_graphs=true",))
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


# --- bf16 autocast -----------------------------------------------------------------------


def test_bf16_autocast_keeps_batch_renorm_float32() -> None:
    update = make(extra=("run.autocast=bf16",))
    dtypes: dict[str, set[torch.dtype]] = {"linear": set(), "brn": set(), "q_head": set()}
    critic = update.agent.critic
    for module in critic.modules():
        kind = ("q_head" if module is critic.mlp.head else "linear" if isinstance(module, StackedLinear)
                else "brn" if isinstance(module, BatchRenorm1d) else None)
        if kind:
            module.register_forward_hook(lambda m, args, out, kind=kind: dtypes[kind].add(out.dtype))
    for _ in range(6):  # crosses BRN warmup and includes two actor steps
        metrics = update.step()
    # The Q head is a dot product (no matmul), so it stays in the float32 of the BRN before it.
    assert dtypes == {"linear": {torch.bfloat16}, "brn": {torch.float32}, "q_head": {torch.float32}}
    for name, buf in update.agent.critic.named_buffers():
        if "running" in name:
            assert buf.dtype == torch.float32 and torch.isfinite(buf).all(), name
    assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
    assert all(p.dtype == torch.float32 for p in update.agent.parameters())
