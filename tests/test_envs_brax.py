"""Brax adapter on the CPU: zero-copy DLPack, exact final obs, truncation, seeding, one compile.

One small env (inverted_pendulum, generalized) is shared by most tests so that JAX compiles
it once per session; the persistent compile cache makes later sessions faster still.
"""

import os
import warnings

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("brax")

from jax._src import xla_bridge  # noqa: E402

from crossq_gpu.envs import UnknownEnvError, VecEnv, make_env  # noqa: E402
from crossq_gpu.envs import brax as brax_adapter  # noqa: E402
from crossq_gpu.envs.brax import JaxVecEnv, jax_device_for, jax_to_torch, torch_to_jax  # noqa: E402

N, LIMIT = 16, 10
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env() -> JaxVecEnv:
    env = make_env("inverted_pendulum", N, seed=0, episode_length=LIMIT)
    assert isinstance(env, JaxVecEnv)
    return env


def _actions(steps: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return (torch.rand(steps, N, 1, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * scale


def test_shapes_and_dtypes(env: JaxVecEnv) -> None:
    assert isinstance(env, VecEnv)
    assert (env.obs_dim, env.act_dim, env.num_actions, env.max_episode_steps) == (4, 1, None, LIMIT)
    obs = env.reset(seed=0)
    assert obs.shape == (N, 4) and obs.dtype == torch.float32 and obs.device == env.device
    obs, reward, terminated, truncated, info = env.step(torch.zeros(N, 1))
    assert reward.shape == (N,) and reward.dtype == torch.float32
    assert terminated.dtype == truncated.dtype == torch.bool
    assert info["final_obs"].shape == (N, 4)


def test_dlpack_is_zero_copy() -> None:
    x = jax.numpy.arange(12.0, dtype=jax.numpy.float32).reshape(3, 4)
    t = jax_to_torch(x, torch.device("cpu"))
    assert t.data_ptr() == x.unsafe_buffer_pointer()
    a = torch.rand(5, 3)
    assert torch_to_jax(a).unsafe_buffer_pointer() == a.data_ptr()


def test_final_obs_matches_stepping_without_autoreset(env: JaxVecEnv) -> None:
    """Replay the raw env (no auto-reset, no time limit) from the same initial states."""
    env.reset(seed=1)
    state = env._carry.state  # the raw batched State right after reset
    raw_step = jax.jit(jax.vmap(env.env.step))
    live = np.ones(N, bool)
    saw_term = saw_trunc = False
    for t, action in enumerate(_actions(LIMIT + 5, scale=0.1), start=1):  # gentle: some reach the limit
        obs, reward, terminated, truncated, info = env.step(action)
        state = raw_step(state, jax.numpy.asarray(3.0 * action.numpy()))  # ctrl range [-3, 3]
        ref_obs, ref_done = torch.tensor(np.asarray(state.obs)), np.asarray(state.done) > 0.5
        m = torch.from_numpy(live)
        torch.testing.assert_close(info["final_obs"][m], ref_obs[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reward[m], torch.tensor(np.asarray(state.reward))[m], atol=1e-5, rtol=1e-5)
        assert np.array_equal(terminated.numpy()[live], ref_done[live])
        assert np.array_equal(truncated.numpy()[live], np.full(live.sum(), t == LIMIT) & ~ref_done[live])
        ended = (terminated | truncated).numpy()
        assert not torch.equal(obs[ended], info["final_obs"][ended]) or not ended.any()
        assert torch.equal(obs[~ended], info["final_obs"][~ended])
        saw_term |= bool((terminated.numpy() & live).any())
        saw_trunc |= bool((truncated.numpy() & live).any())
        live &= ~ended
    assert saw_term and saw_trunc


def test_finished_episodes_restart_from_fresh_reset_states(env: JaxVecEnv) -> None:
    """Restarts come from the pool of reset states, the pool is renewed, and starts vary."""
    pool_size, refresh = brax_adapter.reset_pool_sizes(N)
    env.reset(seed=11)
    raw_reset = jax.jit(jax.vmap(env.env.reset))
    starts, renewed = [], 0
    for action in _actions(3 * LIMIT, seed=4):
        before = env._carry.pool
        pool_obs = torch.tensor(np.asarray(before.obs))
        obs, _, terminated, truncated, _ = env.step(action)
        ended = terminated | truncated
        for row in obs[ended]:  # every restart is one of the pool's reset states
            assert (pool_obs == row).all(dim=1).any()
            starts.append(row)
        renewed += int((np.asarray(env._carry.pool.obs) != np.asarray(before.obs)).any(axis=1).sum())
    assert len(starts) >= N and len({tuple(s.tolist()) for s in starts}) > N // 2
    assert renewed == pytest.approx(3 * LIMIT * refresh, rel=0.2) and pool_size == N
    # Renewed entries are genuine resets: their obs lie where reset() puts them.
    fresh = np.asarray(raw_reset(jax.random.split(jax.random.PRNGKey(0), 64)).obs)
    pool = np.asarray(env._carry.pool.obs)
    assert np.abs(pool).max() <= np.abs(fresh).max() * 1.5 + 1e-6


def test_split_step_equals_step(env: JaxVecEnv) -> None:
    """step_async + step_wait (the overlapped learner loop) gives what step gives."""
    actions = _actions(LIMIT + 3, seed=6)
    env.reset(seed=8)
    whole = [tuple(t.clone() for t in env.step(a)[:4]) for a in actions]
    env.reset(seed=8)
    split = []
    for a in actions:
        env.step_async(a)
        a.fill_(0.5)  # the env holds its own copy of the action
        split.append(tuple(t.clone() for t in env.step_wait()[:4]))
    assert all(torch.equal(x, y) for w, p in zip(whole, split, strict=True) for x, y in zip(w, p, strict=True))
    with pytest.raises(RuntimeError, match="without step_async"):
        env.step_wait()


def test_time_limit_is_truncation_and_counter_restarts(env: JaxVecEnv) -> None:
    env.reset(seed=2)
    count = torch.zeros(N, dtype=torch.int64)
    truncations = 0
    for _ in range(3 * LIMIT):
        _, _, terminated, truncated, _ = env.step(torch.zeros(N, 1))
        count += 1
        assert torch.equal(truncated, (count == LIMIT) & ~terminated)
        count[terminated | truncated] = 0
        truncations += int(truncated.sum())
    assert truncations >= N  # zero force keeps the pole up past the first limit


def test_same_seed_same_trajectory(env: JaxVecEnv) -> None:
    def rollout(seed: int) -> list[torch.Tensor]:
        out = [env.reset(seed=seed).clone()]
        for action in _actions(LIMIT + 5):  # crosses auto-resets, which draw from the key
            out.append(env.step(action)[0].clone())
        return out

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_no_recompilation_after_first_step(env: JaxVecEnv) -> None:
    env.reset(seed=3)
    for i, action in enumerate(_actions(LIMIT + 5)):  # through auto-resets
        if i % 3 == 1:
            action = action.double()  # another dtype is cast before it reaches JAX
        if i % 3 == 2:
            action = action.expand(N, 1).t().contiguous().t()  # non-contiguous layout
        env.step(action)
    env.reset(seed=4)
    env.step(torch.zeros(N, 1))
    assert env._step._cache_size() == 1
    assert env._reset._cache_size() == 1


def test_state_dict_resumes_exactly(env: JaxVecEnv) -> None:
    actions = _actions(2 * LIMIT, seed=9)
    env.reset(seed=7)
    for action in actions[:LIMIT // 2]:
        env.step(action)
    saved = env.state_dict()
    first = [env.step(a)[0].clone() for a in actions[LIMIT // 2:]]
    env.reset(seed=123)
    env.load_state_dict(saved)
    again = [env.step(a)[0].clone() for a in actions[LIMIT // 2:]]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def render_or_skip(env: JaxVecEnv) -> np.ndarray:
    """env.render(), or a skip where this machine has no offscreen OpenGL (EGL) for MuJoCo."""
    try:
        return env.render()
    except ValueError as exc:
        if "GL context" not in str(exc):
            raise
        pytest.skip(f"no offscreen OpenGL here: {exc}")


def test_render_draws_env_zero_as_braxs_own_renderer_does(env: JaxVecEnv) -> None:
    """The frame of env 0's current physics state; Brax's render_array (a new renderer per call,
    the free camera, as this model has no `track` camera) is the reference."""
    env.reset(seed=3)
    for action in _actions(4, seed=3):
        env.step(action)
    state = jax.tree.map(lambda x: x[0], env._carry.state.pipeline_state)
    frame = render_or_skip(env)
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, env.env.render([state])[0])
    other = jax.tree.map(lambda x: x[1], env._carry.state.pipeline_state)
    assert not np.array_equal(frame, env.env.render([other])[0])  # env 1 is elsewhere by now
    assert env.render_fps == round(1 / env.env.dt)


def test_record_video_writes_one_episode_up_to_its_end(env: JaxVecEnv, tmp_path) -> None:
    from crossq_gpu.evaluate import record_video

    class Still:
        def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
            return torch.zeros(obs.shape[0], 1)

    obs = env.reset(seed=5)
    render_or_skip(env)
    steps = 0
    done = False
    while not done:  # the same episode, stepped without recording: its length
        obs, _, terminated, truncated, _ = env.step(Still().act(obs))
        steps += 1
        done = bool((terminated | truncated).any())
    path = tmp_path / "episode.mp4"
    record_video(Still(), env, seed=5, path=path)
    import imageio.v2 as imageio

    assert len(imageio.mimread(path)) == steps  # the start and each step before the last


@pytest.mark.parametrize("backend", ["mjx", pytest.param("spring", marks=pytest.mark.slow),
                                     pytest.param("positional", marks=pytest.mark.slow)])
def test_other_backends_step_truncate_and_compile_once(backend: str) -> None:
    env = make_env("inverted_pendulum", 4, seed=0, backend=backend, episode_length=5)
    assert env.reset().shape == (4, 4)
    for t in range(1, 8):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(4, 1))
        assert not terminated.any() and bool(truncated.all()) == (t == 5)
    assert obs.shape == info["final_obs"].shape == (4, 4) and reward.isfinite().all()
    assert env._step._cache_size() == 1


@pytest.mark.skipif(bool(jax.devices()[0].platform == "gpu"), reason="JAX has a GPU here")
def test_cuda_without_jax_gpu_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brax_adapter, "_warned_no_gpu", False)
    with pytest.warns(RuntimeWarning, match="JAX has no GPU backend"):
        assert jax_device_for(torch.device("cuda")).platform == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax_device_for(torch.device("cuda"))


def test_invalid_backend_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="generalized, mjx, spring, positional"):
        make_env("inverted_pendulum", 1, backend="warp-speed")


def test_unknown_name_lists_brax_and_gym_names() -> None:
    with pytest.raises(UnknownEnvError, match="halfcheetah") as err:
        make_env("half_cheetah", 1)
    assert "gym:CartPole-v1" in str(err.value) and "Did you mean halfcheetah" in str(err.value)


def test_playground_without_the_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "mujoco_playground", None)
    with pytest.raises(ImportError, match="pip install playground"):
        make_env("playground:CartpoleBalance", 1)


def test_playground_dmc_env() -> None:
    pytest.importorskip("mujoco_playground")
    env = make_env("playground:CartpoleBalance", 2, seed=0, episode_length=5)
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (5, 1, 5)
    env.reset()
    for t in range(1, 11):
        obs, _, terminated, truncated, info = env.step(torch.zeros(2, 1))
        assert not terminated.any() and bool(truncated.all()) == (t % 5 == 0)
    assert obs.shape == info["final_obs"].shape == (2, 5)


def test_brax_import_noise_stays_out_of_the_terminal() -> None:
    """MJX's missing-Warp lines and Brax's maintenance notice are dropped; real warnings stay."""
    import subprocess
    import sys

    code = ("import warnings; from crossq_gpu.envs import make_env; make_env('inverted_pendulum', 2); "
            "warnings.warn('a real warning')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "a real warning" in done.stderr
    assert "Failed to import warp" not in output and "not actively being maintained" not in output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ant_at_1024_envs_resets_and_steps_on_the_cpu() -> None:
    """With jaxlib 0.10's default CPU flags this first reset hung (every XLA thread idle), in
    every try with YNNPACK fusions and in 4 of 13 without; the adapter's CPU_XLA_FLAGS (set by
    conftest before JAX starts, as the learner sets them) avoided it in 13 of 13. ~35 s, most
    of it compiling: a failure here by timeout is that hang, not slowness."""
    env = make_env("ant", 1024, seed=0)
    obs = env.reset()
    next_obs, reward, *_ = env.step(torch.zeros(1024, env.act_dim))
    assert obs.shape == next_obs.shape == (1024, 27) and torch.isfinite(reward).all()


def test_cpu_xla_flags_are_added_once_before_jax_starts_and_not_for_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process started JAX with them (conftest); a user's own setting of one is kept, and
    the added ones go first, since XLA ignores everything after a token that is not a flag (a
    stray token once hid them from every benchmark run); with a GPU plugin they stay out; once
    JAX has started they are not added but warned about."""
    for flag in brax_adapter.CPU_XLA_FLAGS:
        assert flag in os.environ["XLA_FLAGS"].split()
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_dump_to=x stray=1")
    brax_adapter.set_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_cpu_experimental_ynn_fusion_type=",
                                               "--xla_cpu_enable_concurrency_optimized_scheduler=true",
                                               "--xla_dump_to=x", "stray=1"]
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "")
    monkeypatch.setattr(brax_adapter, "jax_has_gpu_plugin", lambda: True)
    brax_adapter.set_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setattr(brax_adapter, "jax_has_gpu_plugin", lambda: False)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    with pytest.warns(RuntimeWarning, match="JAX started before"):
        brax_adapter.set_cpu_xla_flags()
    assert os.environ["XLA_FLAGS"] == ""


def test_offscreen_gl_is_egl_only_without_a_display_a_choice_or_missing_egl(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [({}, "libEGL.so.1", "egl"), ({}, None, None), ({"DISPLAY": ":0"}, "libEGL.so.1", None),
             ({"MUJOCO_GL": "osmesa"}, "libEGL.so.1", "osmesa")]
    for env, egl, expected in cases:
        for name in ("DISPLAY", "MUJOCO_GL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(brax_adapter.ctypes.util, "find_library", lambda _, egl=egl: egl)
        brax_adapter.set_offscreen_gl()
        assert os.environ.get("MUJOCO_GL") == expected, (env, egl)
