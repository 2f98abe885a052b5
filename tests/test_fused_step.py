"""The whole gradient step as one compiled program: the eager step's training, fresh noise, one graph.

tests/test_update.py's compiled == eager test covers CrossQ and SAC on uniform replay with both
variants (critic only, actor step); these add prioritized replay (with weight normalisation), discrete actions,
n-step returns and bf16,
each with the actor step on every call (policy_delay 1), so each case compiles one program.
"""

import pytest
import torch

from crossq_gpu.fused_step import adam_
from crossq_gpu.update import Update, make_adam
from tests.factories import B, small_config, small_update
from tests.fixed_batches import FixedBatches

STEPS = 4  # crosses the BRN warmup of 2 steps


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    """No program of another test to reuse, and graph counters from zero."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def make(algo: str = "CrossQ", discrete: bool = False, compile: bool = False, extra: tuple[str, ...] = ()) -> Update:
    """small_update's Update (64 random transitions) with or without the fused step."""
    return small_update(f"run.compile={str(compile).lower()}", *extra, algo=algo, discrete=discrete)


def train_pair(algo: str, discrete: bool, extra: list[str]) -> tuple[Update, Update, list[tuple[dict, dict]]]:
    """An eager and a fused update from one seed (same weights, same buffer contents), STEPS steps
    with the same seed before each; Inductor draws from torch's generator (fallback_random)."""
    updates = []
    for compiled in (False, True):
        torch.manual_seed(1)
        updates.append(make(algo=algo, discrete=discrete, compile=compiled,
                            extra=("agent.algorithm.policy_delay=1", *extra)))
    eager, fused = updates
    assert eager._fused is None and fused._fused is not None
    metrics = []
    with torch._inductor.config.patch(fallback_random=True):
        for step in range(STEPS):
            pair = []
            for update in (eager, fused):
                torch.manual_seed(10 + step)
                pair.append({k: v.clone() for k, v in update.step().items()})
            metrics.append((pair[0], pair[1]))
    return eager, fused, metrics


def assert_same(eager: Update, fused: Update, metrics: list[tuple[dict, dict]], rtol: float, atol: float) -> None:
    for want, got in metrics:
        assert set(got) == set(want) and "actor_loss" in want
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=key)
    for (name, want), got in zip(eager.agent.state_dict().items(), fused.agent.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=name)
    for name in ("critic_opt", "actor_opt", "alpha_opt"):
        for want, got in zip(getattr(eager, name).state.values(), getattr(fused, name).state.values()):
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=f"{name} {key}")


@pytest.mark.parametrize(("algo", "discrete", "extra"), [
    ("CrossQ", False, ["agent.memory.name=PrioritizedReplay", "agent.critic_net.weight_norm=true"]),
    ("SAC", True, []),
    ("CrossQ", False, ["agent.algorithm.n_step=3"]),
], ids=["CrossQ-prioritized-weight_norm", "SAC-discrete", "CrossQ-n_step_3"])
def test_fused_step_trains_like_the_eager_step(fresh_dynamo: None, algo: str, discrete: bool,
                                               extra: list[str]) -> None:
    """Metrics, weights, BRN statistics, Adam's moments and step counts, and for prioritized
    replay the sum tree, max priority and β counter: all as the eager step leaves them."""
    eager, fused, metrics = train_pair(algo, discrete, extra)
    assert_same(eager, fused, metrics, rtol=1e-4, atol=1e-5)
    assert [float(s["step"]) for s in fused.critic_opt.state.values()] == [STEPS] * len(fused.critic_params)
    for want, got in zip(eager.buffer.mutable_tensors(), fused.buffer.mutable_tensors()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    if fused.prioritized:
        assert int(fused.buffer.sample_calls) == STEPS
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_fused_step_under_bf16_autocast_trains_like_the_eager_one(fresh_dynamo: None) -> None:
    """bf16 matmuls, float32 BRN: the metrics of eager autocast to bf16's precision, and every
    weight moved as far and in the same direction (where a gradient entry is near 0, bf16
    rounding may flip the sign Adam steps in, so weights differ by up to lr per step). All the
    weights together move in the same direction (cosine > 0.99) and as far; each tensor alone
    roughly so (a tensor of a handful of entries has few to average that rounding over)."""
    torch.manual_seed(1)
    start = make(extra=("run.autocast=bf16",)).agent.state_dict()
    eager, fused, metrics = train_pair("CrossQ", False, ["run.autocast=bf16"])
    for want, got in metrics:
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=2e-2, atol=2e-3, msg=key)

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    moved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (name, want), got in zip(eager.agent.state_dict().items(), fused.agent.state_dict().values()):
        if "running" in name or "steps" in name:  # the statistics of float32 BRN inputs: close
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4, msg=name)
            continue
        moved_e, moved_f = (want - start[name]).flatten().double(), (got - start[name]).flatten().double()
        assert moved_e.norm() > 0, name
        assert cosine(moved_e, moved_f) > 0.9, name
        moved.append((moved_e, moved_f))
    all_e, all_f = (torch.cat(side) for side in zip(*moved))
    assert cosine(all_e, all_f) > 0.99
    assert abs(all_f.norm() / all_e.norm() - 1) < 0.05


@torch._inductor.config.patch(fallback_random=False)
def test_fused_step_draws_fresh_noise_every_call(fresh_dynamo: None) -> None:
    """Inductor's own RNG (the learner's setting): two calls from the same weights, statistics
    and log α on the same batch still differ in both losses, through the noise of a' ~ π(s')
    and ã ~ π(s) alone. A program that baked its noise in would repeat them."""
    update = make(compile=True, extra=("agent.algorithm.policy_delay=1",))
    agent = update.agent
    batch = update.buffer.sample(B)
    update.buffer = FixedBatches([batch, batch])
    start = {k: v.clone() for k, v in agent.state_dict().items()}
    first = update.step()
    agent.load_state_dict(start)  # in place: the program reads the same tensors
    second = update.step()
    assert torch.equal(first["alpha"], second["alpha"])
    assert not torch.equal(first["critic_loss"], second["critic_loss"]), "critic loss repeated: a' noise is stale"
    assert not torch.equal(first["actor_loss"], second["actor_loss"]), "actor loss repeated: ã noise is stale"


def test_functional_adam_equals_torch_adam() -> None:
    """adam_ against torch's fused Adam over several steps: moments, step counts and parameters."""
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(())]
    ours = [p.clone() for p in params]
    cfg = small_config().agent.critic_net.optim
    cpu = torch.device("cpu")
    reference, functional = make_adam(params, cfg, cpu, False), make_adam(ours, cfg, cpu, False)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        reference.step()
        adam_(functional, ours, grads)
    for p, q in zip(params, ours):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    for want, got in zip(reference.state.values(), functional.state.values()):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
