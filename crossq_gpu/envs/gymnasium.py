"""Gymnasium ids (`gym:ID`) behind the VecEnv protocol: a CPU SyncVectorEnv, tensors moved to `device`.

The vector env auto-resets in SAME_STEP mode, which hands the true last observation of an
ended episode over in info["final_obs"] (gymnasium's default NEXT_STEP mode would instead
return it as obs and spend the next step on the reset). Sync, not Async: these are the small
CPU / discrete-action problems, where subprocess round trips cost more than they save, and
the sub-envs must be reachable for render() and state_dict().
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import TimeLimit

from crossq_gpu.envs.base import GYM_PREFIX, unknown_env


def gym_env_ids() -> list[str]:
    """Every id in gymnasium's registry (those needing extra packages fail only when made)."""
    return sorted(gym.registry)


class GymVecEnv:
    """`num_envs` copies of one Gymnasium env; Box or Discrete actions, Box observations."""

    def __init__(self, env_id: str, num_envs: int, device: torch.device, seed: int = 0, *,
                 render_mode: str | None = None, max_episode_steps: int | None = None,
                 make_one: Callable[[], gym.Env] | None = None, **make_kwargs: Any) -> None:
        """make_one builds each sub-env instead of gym.make(env_id) (the user's own env or
        factory); env_id is then only the label that state_dict() checks."""
        if make_one is None:
            try:
                gym.spec(env_id)
            except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as exc:
                raise unknown_env(GYM_PREFIX + env_id, f" ({exc})") from None

            def make_one() -> gym.Env:
                return gym.make(env_id, render_mode=render_mode, max_episode_steps=max_episode_steps,
                                **make_kwargs)
        self.env_id = env_id
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.seed = seed
        self.vec = SyncVectorEnv([make_one] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        spec = self.vec.envs[0].spec
        self.max_episode_steps = max_episode_steps or (spec.max_episode_steps if spec else None)
        self.render_fps: int = self.vec.metadata.get("render_fps") or 30

        obs_space, act_space = self.vec.single_observation_space, self.vec.single_action_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ValueError(f"gym:{env_id}: only Box observation spaces are supported, got {obs_space}")
        self.obs_dim = int(np.prod(obs_space.shape))
        self.act_dim: int | None = None
        self.num_actions: int | None = None
        if isinstance(act_space, gym.spaces.Discrete):
            self.num_actions = int(act_space.n)
            self.action_start = int(act_space.start)
        elif isinstance(act_space, gym.spaces.Box):
            if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
                raise ValueError(f"gym:{env_id}: action bounds must be finite to scale [-1, 1] onto them")
            self.act_dim = int(np.prod(act_space.shape))
            self._act_shape = act_space.shape
            self._act_dtype = act_space.dtype
            self.action_low = act_space.low.astype(np.float64).reshape(-1)
            self.action_high = act_space.high.astype(np.float64).reshape(-1)
        else:
            raise ValueError(f"gym:{env_id}: only Box and Discrete action spaces are supported, got {act_space}")

    def _obs(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x.reshape(self.num_envs, -1), dtype=torch.float32).to(self.device)

    def _vec(self, x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype).to(self.device)

    def _scale_action(self, action: torch.Tensor) -> np.ndarray:
        """[-1, 1] → [low, high] (continuous; clipped first), or index + start (discrete)."""
        a = action.detach().cpu().numpy()
        if self.num_actions is not None:
            return a.astype(np.int64).reshape(self.num_envs) + self.action_start
        a = np.clip(a.reshape(self.num_envs, -1).astype(np.float64), -1.0, 1.0)
        a = self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)
        return a.astype(self._act_dtype).reshape((self.num_envs, *self._act_shape))

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Sub-env i is seeded with seed + i (gymnasium's convention); None: make_env's seed."""
        obs, _ = self.vec.reset(seed=self.seed if seed is None else seed)
        return self._obs(obs)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, dict[str, torch.Tensor]]:
        obs, reward, terminated, truncated, info = self.vec.step(self._scale_action(action))
        final = obs.copy()
        ended = info.get("_final_obs")
        if ended is not None and ended.any():
            final[ended] = np.stack(info["final_obs"][ended])
        truncated = truncated & ~terminated
        return (self._obs(obs), self._vec(reward, torch.float32), self._vec(terminated, torch.bool),
                self._vec(truncated, torch.bool), {"final_obs": self._obs(final)})

    def render(self) -> np.ndarray:
        """The first sub-env's frame (needs make_env(..., render_mode="rgb_array"))."""
        return self.vec.envs[0].render()

    def state_dict(self) -> dict[str, Any]:
        """Time step, RNG and physical state of each sub-env, as plain data (no pickled code).

        Exact for classic control (`unwrapped.state`) and MuJoCo envs (qpos, qvel); other envs
        only keep their time step and RNG, so their current episodes do not survive a resume.
        """
        return {"env_id": self.env_id, "envs": [_sub_state(e) for e in self.vec.envs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["env_id"] != self.env_id or len(state["envs"]) != self.num_envs:
            raise ValueError(f"env state is for {len(state['envs'])} x gym:{state['env_id']}, "
                             f"not {self.num_envs} x gym:{self.env_id}")
        for env, sub in zip(self.vec.envs, state["envs"], strict=True):
            _load_sub_state(env, sub)

    def close(self) -> None:
        self.vec.close()


def _time_limit(env: gym.Env) -> TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return env
        env = env.env
    return None


def _sub_state(env: gym.Env) -> dict[str, Any]:
    u = env.unwrapped
    limit = _time_limit(env)
    state: dict[str, Any] = {"rng": u.np_random.bit_generator.state,
                             "elapsed": None if limit is None else limit._elapsed_steps}
    if hasattr(u, "set_state") and hasattr(u, "data"):  # gymnasium's MujocoEnv
        state["qpos"] = torch.tensor(u.data.qpos)
        state["qvel"] = torch.tensor(u.data.qvel)
    elif isinstance(getattr(u, "state", None), np.ndarray):
        state["state"] = torch.tensor(u.state)
    return state


def _load_sub_state(env: gym.Env, state: dict[str, Any]) -> None:
    u = env.unwrapped
    u.np_random.bit_generator.state = state["rng"]
    limit = _time_limit(env)
    if limit is not None and state["elapsed"] is not None:
        limit._elapsed_steps = state["elapsed"]
    if "qpos" in state:
        u.set_state(state["qpos"].numpy(), state["qvel"].numpy())
    elif "state" in state:
        u.state = state["state"].numpy().copy()
