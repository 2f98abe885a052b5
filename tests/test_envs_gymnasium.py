"""Gymnasium adapter: shapes, exact final observations, truncation vs termination, scaling."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from crossq_gpu.envs import UnknownEnvError, VecEnv, known_envs, make_env


def test_continuous_shapes_and_dtypes() -> None:
    env = make_env("gym:Pendulum-v1", 3, seed=0)
    assert isinstance(env, VecEnv)
    assert (env.obs_dim, env.act_dim, env.num_actions, env.max_episode_steps) == (3, 1, None, 200)
    obs = env.reset()
    assert obs.shape == (3, 3) and obs.dtype == torch.float32
    obs, reward, terminated, truncated, info = env.step(torch.zeros(3, 1))
    assert obs.shape == (3, 3) and obs.dtype == torch.float32
    assert reward.shape == (3,) and reward.dtype == torch.float32
    assert terminated.dtype == truncated.dtype == torch.bool and terminated.shape == (3,)
    assert torch.equal(info["final_obs"], obs)


def test_discrete_shapes_and_dtypes() -> None:
    env = make_env("gym:CartPole-v1", 2, seed=0)
    assert (env.obs_dim, env.act_dim, env.num_actions) == (4, None, 2)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(torch.tensor([0, 1]))
    assert obs.shape == (2, 4) and reward.shape == (2,) and info["final_obs"].shape == (2, 4)


@pytest.mark.parametrize("env_id,n_steps", [("CartPole-v1", 60), ("Pendulum-v1", 205)])
def test_final_obs_matches_a_single_env_without_autoreset(env_id: str, n_steps: int) -> None:
    """Each sub-env's ended episode, replayed on a plain gym env (seed + i, same actions)."""
    n = 3
    env = make_env(f"gym:{env_id}", n, seed=7)
    singles = [gym.make(env_id) for _ in range(n)]
    refs = [torch.as_tensor(s.reset(seed=7 + i)[0]) for i, s in enumerate(singles)]
    obs = env.reset()
    assert torch.allclose(obs, torch.stack(refs))
    live = [True] * n
    ended = 0
    g = torch.Generator().manual_seed(0)
    for _ in range(n_steps):
        if env.num_actions is not None:
            action = torch.randint(2, (n,), generator=g)
        else:
            action = torch.rand(n, 1, generator=g) * 2 - 1
        obs, _, terminated, truncated, info = env.step(action)
        for i, single in enumerate(singles):
            if not live[i]:
                continue
            a = int(action[i]) if env.num_actions is not None else 2.0 * action[i].numpy()
            ref_obs, _, ref_term, ref_trunc, _ = single.step(a)
            assert torch.allclose(info["final_obs"][i], torch.as_tensor(ref_obs))
            assert bool(terminated[i]) == ref_term
            if ref_term or ref_trunc:
                live[i] = False
                ended += 1
                assert not torch.allclose(obs[i], info["final_obs"][i])  # obs is the reset one
    assert ended >= 1


def test_pendulum_time_limit_is_truncation() -> None:
    env = make_env("gym:Pendulum-v1", 2, seed=0)
    env.reset()
    for t in range(1, 201):
        _, _, terminated, truncated, _ = env.step(torch.zeros(2, 1))
        assert not terminated.any()
        assert bool(truncated.all()) == (t == 200)


def test_cartpole_fall_is_termination() -> None:
    env = make_env("gym:CartPole-v1", 1, seed=0)
    env.reset()
    for _ in range(100):  # always pushing left: the pole falls in well under 100 steps
        _, _, terminated, truncated, _ = env.step(torch.zeros(1, dtype=torch.int64))
        if terminated.any():
            assert not truncated.any()
            return
    pytest.fail("CartPole never terminated")


@pytest.mark.parametrize("action,torque", [(1.0, 2.0), (-1.0, -2.0), (-0.5, -1.0), (0.25, 0.5), (3.0, 2.0)])
def test_action_scaled_to_box_bounds(action: float, torque: float) -> None:
    env = make_env("gym:Pendulum-v1", 1, seed=0)  # Box(-2, 2)
    env.reset()
    env.step(torch.full((1, 1), action))
    assert env.vec.envs[0].unwrapped.last_u == pytest.approx(torque)


def test_state_dict_resumes_the_same_episodes() -> None:
    a = make_env("gym:Pendulum-v1", 2, seed=0)
    a.reset()
    for _ in range(150):
        a.step(torch.ones(2, 1))
    b = make_env("gym:Pendulum-v1", 2, seed=99)
    b.reset()
    b.load_state_dict(a.state_dict())
    for _ in range(60):  # crosses the time limit at 200 and the RNG-drawn reset after it
        oa, ra, _, ta, _ = a.step(torch.ones(2, 1))
        ob, rb, _, tb, _ = b.step(torch.ones(2, 1))
        assert torch.equal(oa, ob) and torch.equal(ra, rb) and torch.equal(ta, tb)


def test_render_mode_rgb_array() -> None:
    pytest.importorskip("pygame")  # gymnasium's classic-control renderer
    env = make_env("gym:CartPole-v1", 1, seed=0, render_mode="rgb_array")
    env.reset()
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3


def test_unknown_gym_id_lists_known_names() -> None:
    with pytest.raises(UnknownEnvError, match="CartPole-v1") as err:
        make_env("gym:CartPol-v1", 1)
    assert "gym:Pendulum-v1" in str(err.value) and "Did you mean" in str(err.value)
    assert "gym:Pendulum-v1" in known_envs()


def test_num_envs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_env("gym:Pendulum-v1", 0)
