"""PrioritizedReplay against numpy references: frequencies, IS weights, the sum tree, β, compile."""

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from scipy.stats import chisquare

from crossq_gpu.buffer import Batch, PrioritizedReplay

OBS_DIM, ACT_DIM = 3, 2
ALPHA, EPS = 0.6, 1e-6


def make(max_size: int, num_envs: int, **kwargs: float) -> PrioritizedReplay:
    return PrioritizedReplay(OBS_DIM, (ACT_DIM,), max_size, num_envs, "cpu", alpha=ALPHA, eps=EPS, **kwargs)


def add_steps(buf: PrioritizedReplay, n_steps: int) -> None:
    for _ in range(n_steps):
        n = buf.num_envs
        buf.add(torch.randn(n, OBS_DIM), torch.randn(n, ACT_DIM), torch.randn(n), torch.randn(n, OBS_DIM),
                torch.zeros(n))


def reference_priority(td: np.ndarray) -> np.ndarray:
    return (np.abs(td) + EPS) ** ALPHA


def leaves(buf: PrioritizedReplay) -> np.ndarray:
    return buf.tree[buf.capacity :].numpy()


def sample_counts(buf: PrioritizedReplay, n_batches: int, batch_size: int) -> np.ndarray:
    counts = torch.zeros(buf.capacity, dtype=torch.int64)
    for _ in range(n_batches):
        counts += torch.bincount(buf.sample(batch_size).indices, minlength=buf.capacity)
    return counts.numpy()


def test_frequencies_proportional_to_priorities() -> None:
    buf = make(max_size=20, num_envs=4)  # tree capacity 32: 12 padding leaves
    add_steps(buf, 4)  # 16 of 20 slots stored
    td = np.linspace(0.05, 3.0, 16)
    buf.update_priorities(torch.arange(16), torch.from_numpy(td).float())
    counts = sample_counts(buf, n_batches=100, batch_size=1000)
    assert counts[16:].sum() == 0
    p = reference_priority(td.astype(np.float32).astype(np.float64))
    expected = counts.sum() * p / p.sum()
    assert chisquare(counts[:16].astype(np.float64), expected).pvalue > 1e-3


def test_is_weights_match_numpy() -> None:
    buf = make(max_size=24, num_envs=3, beta=0.5, beta_final=1.0, beta_steps=4)
    add_steps(buf, 6)  # 18 of 24 stored
    td = np.random.default_rng(0).uniform(0.0, 2.0, 18).astype(np.float32)
    buf.update_priorities(torch.arange(18), torch.from_numpy(td))
    p = reference_priority(td.astype(np.float64))
    P = p / p.sum()
    for call in range(6):
        batch = buf.sample(64)
        beta = 0.5 + 0.5 * min(call / 4, 1.0)
        w = (18 * P[batch.indices.numpy()]) ** -beta
        np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-5)
        assert batch.weights.dtype == torch.float32


def test_update_priorities_changes_frequencies() -> None:
    buf = make(max_size=8, num_envs=2)
    add_steps(buf, 4)
    before = sample_counts(buf, n_batches=20, batch_size=1000)[:8]
    assert chisquare(before).pvalue > 1e-3  # all new transitions share the max priority
    buf.update_priorities(torch.tensor([2, 5]), torch.tensor([10.0, 0.0]))
    after = sample_counts(buf, n_batches=20, batch_size=1000)[:8]
    p = np.ones(8)
    p[2], p[5] = reference_priority(np.array([10.0, 0.0]))
    assert chisquare(after.astype(np.float64), after.sum() * p / p.sum()).pvalue > 1e-3
    assert after[5] == 0 and after[2] > 3 * before[2]


def assert_tree_consistent(buf: PrioritizedReplay) -> None:
    tree = buf.tree.numpy()
    cap = buf.capacity
    np.testing.assert_allclose(tree[1:cap], tree[2 : 2 * cap : 2] + tree[3 : 2 * cap : 2], rtol=1e-12)
    np.testing.assert_allclose(tree[1], tree[cap:].sum(), rtol=1e-12)


def test_sum_tree_after_many_random_updates() -> None:
    buf = make(max_size=100, num_envs=10)
    add_steps(buf, 10)
    gen = torch.Generator().manual_seed(1)
    reference = np.ones(100)
    for _ in range(200):
        # unique slots: the numpy reference can follow them exactly
        idx = torch.randperm(100, generator=gen)[:32]
        td = torch.rand(32, generator=gen) * 5
        buf.update_priorities(idx, td)
        reference[idx.numpy()] = reference_priority(td.double().numpy())
        # repeated slots keep the largest of their priorities
        dup = torch.randint(0, 100, (64,), generator=gen)
        td = torch.rand(64, generator=gen) * 5
        buf.update_priorities(dup, td)
        p = reference_priority(td.double().numpy())
        reference[dup.numpy()] = 0
        np.maximum.at(reference, dup.numpy(), p)
    np.testing.assert_allclose(leaves(buf)[:100], reference, rtol=1e-6)
    assert leaves(buf)[100:].sum() == 0
    assert_tree_consistent(buf)
    np.testing.assert_allclose(buf.tree[1].item(), reference.sum(), rtol=1e-6)


def test_wraparound_new_transitions_get_the_current_max_priority() -> None:
    buf = make(max_size=10, num_envs=4)
    add_steps(buf, 2)  # slots 0..7 at the initial max priority 1
    np.testing.assert_array_equal(leaves(buf)[:10], [1] * 8 + [0, 0])
    buf.update_priorities(torch.tensor([0, 1, 2]), torch.tensor([0.1, 7.0, 0.2]))
    top = reference_priority(np.array(7.0))
    np.testing.assert_allclose(buf.max_priority.item(), top, rtol=1e-6)
    add_steps(buf, 1)  # slots 8, 9, 0, 1
    expected = np.ones(10)
    expected[[8, 9, 0, 1]] = top
    expected[2] = reference_priority(np.array(0.2))
    np.testing.assert_allclose(leaves(buf)[:10], expected, rtol=1e-6)
    assert leaves(buf)[10:].sum() == 0  # padding leaves never receive mass
    assert buf.size.item() == 10 and buf.pos.item() == 2
    assert_tree_consistent(buf)
    assert sample_counts(buf, n_batches=10, batch_size=500)[10:].sum() == 0


def test_beta_anneals_linearly_by_sample_calls_then_holds() -> None:
    buf = make(max_size=8, num_envs=2, beta=0.4, beta_final=1.0, beta_steps=10)
    add_steps(buf, 2)
    for call in range(15):
        assert buf.beta().item() == pytest.approx(0.4 + 0.6 * min(call / 10, 1.0))
        buf.sample(4)
    assert buf.sample_calls.item() == 15
    buf.update_priorities(torch.tensor([0]), torch.tensor([3.0]))
    assert buf.beta().item() == pytest.approx(1.0)  # only sample() moves β


def test_sample_and_update_change_only_the_mutable_tensors() -> None:
    buf = make(max_size=12, num_envs=3)
    add_steps(buf, 3)
    before = {name: value.clone() for name, value in buf.state_dict().items()}
    batch = buf.sample(8)
    buf.update_priorities(batch.indices, torch.full((8,), 9.0))
    mutable = {id(t) for t in buf.mutable_tensors()}
    changed = {name for name, value in before.items() if not torch.equal(getattr(buf, name), value)}
    assert changed == {"tree", "max_priority", "sample_calls"}
    assert all(id(getattr(buf, name)) in mutable for name in changed)


def test_state_round_trip_includes_tree_and_counters() -> None:
    src = make(max_size=12, num_envs=3, beta_steps=5)
    add_steps(src, 5)
    batch = src.sample(8)
    src.update_priorities(batch.indices, torch.rand(8) * 4)
    dst = make(max_size=12, num_envs=3, beta_steps=5)
    dst.load_state_dict(src.state_dict())
    for name in ("tree", "max_priority", "sample_calls", "pos", "size", "obs"):
        assert torch.equal(getattr(dst, name), getattr(src, name)), name
    torch.manual_seed(3)
    a = src.sample(16)
    torch.manual_seed(3)
    b = dst.sample(16)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_add_sample_update_compile_fullgraph_and_match_eager(backend: str) -> None:
    """fullgraph=True fails on any graph break: no host sync in add, sample or update_priorities.
    Inductor is told to draw random numbers as eager does, so the samples can be compared."""

    def step(buf: PrioritizedReplay, transition: tuple[torch.Tensor, ...], td: torch.Tensor) -> Batch:
        buf.add(*transition)
        batch = buf.sample(8)
        buf.update_priorities(batch.indices, td)
        return batch

    eager_buf, compiled_buf = make(max_size=10, num_envs=3, beta_steps=4), make(max_size=10, num_envs=3, beta_steps=4)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    with inductor_config.patch(fallback_random=True):
        for k in range(6):
            transition = tuple(torch.randn(3, *shape) for shape in ((OBS_DIM,), (ACT_DIM,), (), (OBS_DIM,), ()))
            td = torch.randn(8)
            torch.manual_seed(k)
            expected = step(eager_buf, transition, td)
            torch.manual_seed(k)
            got = compiled(compiled_buf, transition, td)
            for field, want in zip(got._fields, expected):
                torch.testing.assert_close(getattr(got, field), want, msg=field)
    for name, value in eager_buf.state_dict().items():
        torch.testing.assert_close(getattr(compiled_buf, name), value, msg=name)
