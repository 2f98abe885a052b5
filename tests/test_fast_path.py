"""The fast path: fresh noise under compile, CUDA-graph capture, discrete acting without a host
sync, the optimizers, bf16 autocast.

The CUDA tests carry the `cuda` marker (`pytest -m cuda` selects them on a GPU node) and skip
with a reason elsewhere; everything else runs on CPU.
"""

from collections.abc import Callable

import pytest
import torch

from crossq_gpu.buffer import ReplayBuffer
from crossq_gpu.config import build_config
from crossq_gpu.kernels import BatchRenorm1d
from crossq_gpu.networks import StackedLinear, build_agent, gumbel_max_sample
from crossq_gpu.update import Update, target_entropy

OBS, ACT, B = 5, 2, 16
CUDA = torch.cuda.is_available()


def needs_cuda(test: Callable) -> Callable:
    """Marked `cuda`, and skipped with a reason where there is no CUDA device."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA device")(test))


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
    """Same batch, same parameters, two calls of the compiled losses: a' ~ π(s') and ã ~ π(s)
    must differ (tests/test_fused_step.py checks the same of the whole-step program).

    Inductor's own RNG (fallback_random off, the default) is what the learner runs; a
    compiled graph that baked its noise in would return identical losses.
    """
    update = make(extra=("run.compile=true", "run.fused_step=false", "agent.critic_net.batch_renorm.warmup_steps=1000"))
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
    """capture.py imports without CUDA, and cuda_graphs=true on a CPU update runs eagerly, with fused Adam."""
    from crossq_gpu.capture import GraphedCall

    assert callable(GraphedCall)
    update = make(extra=("run.cuda_graphs=true",))
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
    eager, graphed = make("cuda", algo, ("run.cuda_graphs=false",)), make("cuda", algo, ("run.cuda_graphs=true",))
    assert_same_training(eager, graphed, rtol=1e-5, atol=1e-6)
    assert set(graphed._graphs) == {False, True}
    assert (adam_kind(eager.critic_opt), adam_kind(graphed.critic_opt)) == ("fused", "capturable foreach")


@needs_cuda
@torch._inductor.config.patch(fallback_random=True)
def test_learner_cuda_path_equals_eager_reference(fresh_dynamo: None) -> None:
    """The learner's CUDA default all at once — compiled losses with the Triton BRN kernels inside,
    the whole step captured as CUDA graphs, capturable Adam — trains like the eager torch reference
    with fused Adam. fallback_random: Inductor draws from torch's generator, so both see one noise."""
    reference = make("cuda", extra=("run.cuda_graphs=false", "agent.critic_net.batch_renorm.impl=torch"))
    fast = make("cuda", extra=("run.compile=true", "run.cuda_graphs=true", "agent.critic_net.batch_renorm.impl=triton"))
    assert_same_training(reference, fast, rtol=1e-4, atol=1e-5)
    assert set(fast._graphs) == {False, True}
    assert int(fast.agent.state_dict()["critic.mlp.norms.0.steps"]) == 6


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


# --- discrete acting without a host sync -------------------------------------------------

CHI2_999_DF4 = 18.47  # 99.9 % quantile of chi-square with 4 degrees of freedom: a 1-in-1000 false alarm
PROBS = torch.tensor([0.5, 0.25, 0.15, 0.09, 0.01])


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's statistic of observed counts against expected ones."""
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_two_samples(a: torch.Tensor, b: torch.Tensor) -> float:
    """Whether two equal-sized samples' counts come from one distribution (homogeneity test)."""
    return float(((a - b) ** 2 / (a + b)).sum())


def counts(actions: torch.Tensor) -> torch.Tensor:
    return torch.bincount(actions, minlength=len(PROBS)).double()


def test_gumbel_max_sampling_matches_multinomial() -> None:
    n = 200_000
    log_probs = PROBS.log().expand(n, -1)
    gumbel = counts(gumbel_max_sample(log_probs))
    multinomial = counts(torch.multinomial(PROBS.expand(n, -1), 1).squeeze(-1))
    assert chi_square_two_samples(gumbel, multinomial) < CHI2_999_DF4
    assert chi_square(gumbel, n * PROBS.double()) < CHI2_999_DF4
    # The check has the power to see a sampler 5 % off in temperature.
    assert chi_square_two_samples(counts(gumbel_max_sample(1.05 * log_probs)), multinomial) > CHI2_999_DF4


def test_discrete_acting_compiles_to_one_graph(fresh_dynamo: None) -> None:
    """fullgraph=True: no graph break in the acting step (an `.item()` or a branch on a tensor
    would be one), and its draws, from Inductor's own RNG, still follow the policy."""
    cfg, _ = build_config("cpu", False, overrides=["agent.net.hidden=[32, 32]"])
    agent = build_agent(cfg, OBS, None, len(PROBS))
    n = 100_000
    obs = torch.randn(1, OBS).expand(n, -1)
    actions = torch.compile(agent.act, fullgraph=True)(obs, deterministic=False)
    probs = agent.actor(obs[:1], training=False)[0][0].detach().double()
    assert actions.shape == (n,) and actions.dtype == torch.int64
    assert chi_square(counts(actions), n * probs) < CHI2_999_DF4


@needs_cuda
def test_discrete_acting_captures_without_host_sync() -> None:
    """The acting step the learner captures, for a discrete policy: capture works (a host sync
    inside it would fail), replays never sync, and every replay draws new actions."""
    from crossq_gpu.capture import GraphedCall

    cfg, _ = build_config("cpu", False, overrides=["agent.net.hidden=[32, 32]"])
    agent = build_agent(cfg, OBS, None, len(PROBS)).cuda()
    obs = torch.randn(256, OBS, device="cuda")
    act = GraphedCall(lambda o: agent.act(o, deterministic=False), state=[], static_inputs=(torch.zeros_like(obs),))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        draws = [act(obs).clone() for _ in range(2)] + [agent.act(obs, deterministic=False)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not torch.equal(draws[0], draws[1])
    assert all(((0 <= a) & (a < len(PROBS))).all() for a in draws)


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
