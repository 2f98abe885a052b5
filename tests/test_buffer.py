"""Uniform ReplayBuffer: ring writes, uniform sampling, the memory check, checkpoints, compile."""

from collections import deque
from unittest import mock

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from scipy.stats import chisquare

from crossq_gpu import buffer as buffer_mod
from crossq_gpu.buffer import BufferTooLarge, PrioritizedReplay, ReplayBuffer, make_buffer
from crossq_gpu.config import MemoryConfig, PrioritizedConfig

OBS_DIM, ACT_DIM = 3, 2


def vector_step(first_id: int, num_envs: int) -> tuple[torch.Tensor, ...]:
    """A vector step whose fields all encode the global transition id, so any slot can be checked."""
    ids = torch.arange(first_id, first_id + num_envs, dtype=torch.float32)
    obs = ids[:, None].repeat(1, OBS_DIM)
    action = torch.stack([ids, -ids], dim=1)
    return obs, action, 10 * ids, obs + 0.5, (ids % 2 == 0).float()


def fill(buf: ReplayBuffer, n_steps: int, first_id: int = 0) -> int:
    for step in range(n_steps):
        buf.add(*vector_step(first_id + step * buf.num_envs, buf.num_envs))
    return first_id + n_steps * buf.num_envs


def assert_slots_consistent(buf: ReplayBuffer, slots: torch.Tensor) -> torch.Tensor:
    """Every field of the given slots belongs to one and the same transition; returns its ids."""
    ids = buf.obs[slots, 0]
    torch.testing.assert_close(buf.obs[slots], ids[:, None].repeat(1, OBS_DIM))
    torch.testing.assert_close(buf.action[slots], torch.stack([ids, -ids], dim=1))
    torch.testing.assert_close(buf.reward[slots], 10 * ids)
    torch.testing.assert_close(buf.next_obs[slots], buf.obs[slots] + 0.5)
    torch.testing.assert_close(buf.terminated[slots], (ids % 2 == 0).float())
    return ids


@pytest.mark.parametrize(("max_size", "num_envs", "n_steps"),
                         [(12, 4, 7), (10, 3, 9), (7, 7, 3), (5, 1, 13), (11, 4, 2)])
def test_wraparound_keeps_exactly_the_newest(max_size: int, num_envs: int, n_steps: int) -> None:
    buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size, num_envs, "cpu")
    newest: deque[int] = deque(maxlen=max_size)
    for step in range(n_steps):
        buf.add(*vector_step(step * num_envs, num_envs))
        newest.extend(range(step * num_envs, (step + 1) * num_envs))
    total = n_steps * num_envs
    assert buf.size.item() == min(total, max_size)
    assert buf.pos.item() == total % max_size
    stored = assert_slots_consistent(buf, torch.arange(buf.size.item()))
    assert sorted(stored.long().tolist()) == sorted(newest)
    # The ring order: transition k lives in slot k % max_size.
    for k in newest:
        assert buf.obs[k % max_size, 0].item() == k


def test_uniform_before_full_never_touches_unwritten_slots() -> None:
    buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=50, num_envs=5, device="cpu")
    fill(buf, 4)  # 20 of 50 slots written
    counts = torch.zeros(50, dtype=torch.int64)
    for _ in range(100):
        batch = buf.sample(2000)
        counts += torch.bincount(batch.indices, minlength=50)
        torch.testing.assert_close(batch.obs, buf.obs[batch.indices])
    assert counts[20:].sum() == 0
    assert chisquare(counts[:20].numpy()).pvalue > 1e-3


def test_uniform_after_wraparound_covers_every_slot_equally() -> None:
    buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=37, num_envs=5, device="cpu")
    fill(buf, 11)
    counts = sum(torch.bincount(buf.sample(4096).indices, minlength=37) for _ in range(50))
    assert chisquare(counts.numpy()).pvalue > 1e-3
    batch = buf.sample(64)
    ids = assert_slots_consistent(buf, batch.indices)
    torch.testing.assert_close(batch.obs[:, 0], ids)
    torch.testing.assert_close(batch.reward, 10 * ids)
    assert batch.weights is None
    assert batch.indices.dtype == torch.int64 and batch.terminated.dtype == torch.float32


def test_sample_is_reproducible_and_side_effect_free() -> None:
    buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=30, num_envs=4, device="cpu")
    fill(buf, 5)
    before = buf.state_dict()
    torch.manual_seed(123)
    first = buf.sample(16)
    torch.manual_seed(123)
    second = buf.sample(16)
    assert torch.equal(first.indices, second.indices)
    for name, value in buf.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert buf.mutable_tensors() == []


def test_discrete_int64_actions() -> None:
    buf = ReplayBuffer(OBS_DIM, (), max_size=8, num_envs=2, device="cpu", action_dtype=torch.int64)
    for step in range(3):
        obs = torch.full((2, OBS_DIM), float(step))
        buf.add(obs, torch.tensor([step, step + 10]), torch.zeros(2), obs, torch.zeros(2, dtype=torch.bool))
    batch = buf.sample(32)
    assert batch.action.dtype == torch.int64 and batch.action.shape == (32,)
    assert batch.obs.shape == (32, OBS_DIM)
    step = batch.obs[:, 0].long()
    env = batch.indices % 2
    assert torch.equal(batch.action, step + 10 * env)


def test_max_size_below_num_envs_is_rejected() -> None:
    with pytest.raises(ValueError, match="memory.max_size=3 must be at least num_envs=4"):
        ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=3, num_envs=4, device="cpu")


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplay])
@pytest.mark.parametrize(("action_shape", "action_dtype"), [((ACT_DIM,), torch.float32), ((), torch.int64)])
def test_nbytes_matches_what_is_allocated(cls: type[ReplayBuffer], action_shape: tuple[int, ...],
                                          action_dtype: torch.dtype) -> None:
    for n_step in (1, 3):
        buf = cls(OBS_DIM, action_shape, max_size=21, num_envs=3, device="cpu", action_dtype=action_dtype,
                  n_step=n_step)
        storage = [buf.obs, buf.action, buf.reward, buf.next_obs, buf.terminated]
        if n_step > 1:
            storage.append(buf.ended)
        if cls is PrioritizedReplay:
            storage.append(buf.tree)
        assert cls.nbytes(OBS_DIM, action_shape, 21, action_dtype, n_step) == sum(t.nbytes for t in storage)


def test_nbytes_formula() -> None:
    # ant-like: 27 obs, 8 actions; 2*27*4 + 8*4 + 4 + 4 = 256 bytes a transition.
    assert ReplayBuffer.nbytes(27, (8,), 10_000_000) == 2_560_000_000
    # The tree of PER is 2 * next_pow2(max_size) float64 nodes.
    assert PrioritizedReplay.nbytes(27, (8,), 10_000_000) == 2_560_000_000 + 2 * 2**24 * 8


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplay])
def test_too_large_names_the_size_that_fits(cls: type[ReplayBuffer]) -> None:
    free = 2**30
    usable = int(free * 0.9)
    requested = 100_000_000
    with mock.patch.object(buffer_mod, "free_memory_bytes", return_value=free):
        with pytest.raises(BufferTooLarge) as info:
            cls(27, (8,), max_size=requested, num_envs=4096, device="cpu")
    message = str(info.value)
    needed = cls.nbytes(27, (8,), requested)
    assert "memory.max_size=100000000" in message
    assert str(needed) in message
    fits = int(message.rsplit("fits is ", 1)[1])
    assert cls.nbytes(27, (8,), fits) <= usable < cls.nbytes(27, (8,), fits + 1)
    if cls is ReplayBuffer:
        assert fits == usable // 256  # independent: 256 bytes a transition
    assert isinstance(info.value, ValueError)


def test_state_round_trip_restores_in_place() -> None:
    src = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=10, num_envs=3, device="cpu")
    next_id = fill(src, 5)
    state = src.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    dst = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=10, num_envs=3, device="cpu")
    obs_ptr = dst.obs.data_ptr()
    dst.load_state_dict(state)
    assert dst.obs.data_ptr() == obs_ptr  # tensors captured in a CUDA graph stay valid
    for name, value in state.items():
        assert torch.equal(getattr(dst, name), value), name
    # Both continue identically.
    fill(src, 2, next_id)
    fill(dst, 2, next_id)
    torch.manual_seed(7)
    a = src.sample(32)
    torch.manual_seed(7)
    b = dst.sample(32)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.obs, b.obs)


def test_load_state_dict_rejects_another_shape() -> None:
    state = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=10, num_envs=2, device="cpu").state_dict()
    other = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=12, num_envs=2, device="cpu")
    with pytest.raises(ValueError, match="memory.max_size"):
        other.load_state_dict(state)


def test_make_buffer() -> None:
    kwargs = dict(obs_dim=OBS_DIM, action_shape=(ACT_DIM,), num_envs=2, device="cpu")
    uniform = make_buffer(MemoryConfig(name="Replay", max_size=8), **kwargs)
    assert type(uniform) is ReplayBuffer and uniform.max_size == 8
    per = make_buffer(MemoryConfig(name="PrioritizedReplay", max_size=8,
                                   prioritized=PrioritizedConfig(alpha=0.7, beta_steps=50)), **kwargs)
    assert type(per) is PrioritizedReplay
    assert (per.alpha, per.beta0, per.beta_steps, per.eps) == (0.7, 0.4, 50, 1e-6)
    with pytest.raises(ValueError, match="known: Replay, PrioritizedReplay"):
        make_buffer(MemoryConfig(name="Uniform"), **kwargs)


@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_add_and_sample_compile_fullgraph_and_match_eager(backend: str, n_step: int) -> None:
    """fullgraph=True fails on any graph break, so this proves add/sample have no host sync
    (.item(), Python branches on tensors, data-dependent shapes). Inductor is told to draw
    random numbers as eager does, so the samples can be compared."""

    def step(buf: ReplayBuffer, transition: tuple[torch.Tensor, ...]) -> buffer_mod.Batch:
        buf.add(*transition)
        return buf.sample(8)

    eager_buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=10, num_envs=3, device="cpu", n_step=n_step, gamma=0.9)
    compiled_buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=10, num_envs=3, device="cpu", n_step=n_step, gamma=0.9)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    with inductor_config.patch(fallback_random=True):
        for k in range(6):  # wraps around twice
            transition = (*vector_step(3 * k, 3), torch.tensor([k == 2, False, k == 4]))
            torch.manual_seed(k)
            expected = step(eager_buf, transition)
            torch.manual_seed(k)
            got = compiled(compiled_buf, transition)
            for field, want in zip(got._fields, expected):
                torch.testing.assert_close(getattr(got, field), want, msg=field)
            assert (got.discount is None) == (n_step == 1)
    for name, value in eager_buf.state_dict().items():
        assert torch.equal(getattr(compiled_buf, name), value), name
    np.testing.assert_array_equal(compiled_buf.pos.numpy(), 18 % 10)


def reference_n_step(episodes: list[list[dict]], n: int, gamma: float) -> dict[int, tuple[float, int, float, float]]:
    """Per transition id: (reward sum, id of the last step, terminated there, γ^m), walked along
    each env's own list of episodes, independently of the buffer's slot arithmetic."""
    out = {}
    for episode in episodes:
        for t, first in enumerate(episode):
            steps = episode[t:t + n]
            reward = sum(gamma**k * step["reward"] for k, step in enumerate(steps))
            out[first["id"]] = (reward, steps[-1]["id"], steps[-1]["terminated"], gamma ** len(steps))
    return out


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplay])
@pytest.mark.parametrize(("max_size", "num_envs", "n_steps", "n"), [(10, 3, 9, 3), (40, 4, 13, 5), (12, 4, 6, 2)])
def test_n_step_returns_match_a_walk_along_each_envs_episodes(cls: type[ReplayBuffer], max_size: int,
                                                              num_envs: int, n_steps: int, n: int) -> None:
    """Random rewards, terminations and truncations over a buffer that wraps (10 slots, 3 envs:
    not a multiple); every stored transition is checked, the newest ones too, whose returns are
    cut short by what is not stored yet."""
    gamma = 0.9
    gen = torch.Generator().manual_seed(max_size)
    buf = cls(OBS_DIM, (ACT_DIM,), max_size, num_envs, "cpu", n_step=n, gamma=gamma)
    episodes: list[list[list[dict]]] = [[[]] for _ in range(num_envs)]
    for step in range(n_steps):
        obs, action, _, next_obs, _ = vector_step(step * num_envs, num_envs)
        reward = torch.randn(num_envs, generator=gen)
        ended = torch.rand(num_envs, generator=gen) < 0.3
        terminated = ended & (torch.rand(num_envs, generator=gen) < 0.5)
        buf.add(obs, action, reward, next_obs, terminated.float(), ended & ~terminated)
        for env in range(num_envs):
            episodes[env][-1].append({"id": step * num_envs + env, "reward": reward[env].item(),
                                      "terminated": float(terminated[env])})
            if ended[env]:
                episodes[env].append([])
    expected = reference_n_step([e for per_env in episodes for e in per_env], n, gamma)
    batch = buf.sample(4096)
    ids = batch.obs[:, 0].long()
    assert len(set(ids.tolist())) == buf.size.item()  # every stored transition was drawn
    assert ids.min().item() == n_steps * num_envs - buf.size.item()  # and only those
    for row, first in enumerate(ids.tolist()):
        reward, last, terminated, discount = expected[first]
        assert batch.reward[row].item() == pytest.approx(reward, rel=1e-5, abs=1e-5)
        assert batch.next_obs[row, 0].item() == last + 0.5  # the last step's own next_obs
        assert batch.terminated[row].item() == terminated
        assert batch.discount[row].item() == pytest.approx(discount, rel=1e-6)
        torch.testing.assert_close(batch.action[row], torch.tensor([first, -first], dtype=torch.float32))


def test_n_step_needs_truncations_and_checkpoints_them() -> None:
    buf = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=6, num_envs=2, device="cpu", n_step=3)
    with pytest.raises(ValueError, match="needs `truncated`"):
        buf.add(*vector_step(0, 2))
    buf.add(*vector_step(0, 2), torch.tensor([False, True]))  # id 0 terminates, id 1 is truncated
    state = buf.state_dict()
    assert state["ended"].tolist() == [True, True, False, False, False, False]
    fresh = ReplayBuffer(OBS_DIM, (ACT_DIM,), max_size=6, num_envs=2, device="cpu", n_step=3)
    with pytest.raises(ValueError, match=r"missing \['ended'\]"):
        fresh.load_state_dict({name: value for name, value in state.items() if name != "ended"})
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ended, buf.ended)
