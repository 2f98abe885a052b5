"""The one environment protocol the learner sees, and the name → backend dispatch.

Names: `gym:ID` (Gymnasium, CPU vector env, also the discrete path), `playground:NAME`
(MuJoCo Playground DMC envs, if installed), anything else a Brax env name. Backend modules
are imported lazily so that `import crossq_gpu` never imports JAX.
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol, runtime_checkable

import torch

GYM_PREFIX = "gym:"
PLAYGROUND_PREFIX = "playground:"


class UnknownEnvError(ValueError):
    """An env name no backend knows; the message lists the known names."""


@runtime_checkable
class VecEnv(Protocol):
    """N auto-resetting envs stepped together; every tensor is torch, on `device`.

    `step(action)` takes [N, act_dim] float in [-1, 1] (scaled to the env's bounds inside)
    or [N] int64 for discrete envs, and returns obs [N, obs_dim] (already reset where an
    episode ended), reward [N] float32, terminated [N] bool, truncated [N] bool (time limit,
    never also terminated) and info with info["final_obs"] [N, obs_dim]: the true last
    observation where terminated | truncated and equal to obs elsewhere, so s' is always
    info["final_obs"]. Returned tensors may share memory with the env: treat them as read-only.
    """

    num_envs: int
    obs_dim: int
    act_dim: int | None
    num_actions: int | None
    max_episode_steps: int | None
    device: torch.device

    def reset(self, seed: int | None = None) -> torch.Tensor: ...

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, dict[str, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncVecEnv(VecEnv, Protocol):
    """A VecEnv whose step can be split: step_async(action) dispatches it and returns at once,
    step_wait() returns what step(action) would. The learner updates in between (run.overlap)."""

    def step_async(self, action: torch.Tensor) -> None: ...

    def step_wait(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor, dict[str, torch.Tensor]]: ...


def known_envs() -> list[str]:
    """Every name make_env accepts here (Brax and Playground names only where installed)."""
    from crossq_gpu.envs import gymnasium as gym_mod

    names: list[str] = []
    try:
        from crossq_gpu.envs import brax as brax_mod
        names += brax_mod.brax_env_names()
    except ImportError:
        pass
    try:
        from crossq_gpu.envs import playground as pg_mod
        names += [PLAYGROUND_PREFIX + n for n in pg_mod.playground_env_names()]
    except ImportError:
        pass
    return names + [GYM_PREFIX + n for n in gym_mod.gym_env_ids()]


def unknown_env(name: str, note: str = "") -> UnknownEnvError:
    """The error for an unknown name: closest matches first, then every known name."""
    names = known_envs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownEnvError(f"unknown environment {name!r}.{hint}{note} Known: {', '.join(names)}")


def make_env(name: str, num_envs: int, device: torch.device | str = "cpu", seed: int = 0,
             backend: str = "generalized", **kwargs: Any) -> VecEnv:
    """Build the vector env for `name`; `seed` is what reset() uses when given no seed.

    kwargs go to the backend: Brax/Playground take `episode_length` (time limit, default
    1000 / the env's own); Gymnasium takes `render_mode`, `max_episode_steps` and gym.make
    kwargs, and ignores `episode_length` (gym ids keep their registered limit).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    device = torch.device(device)
    if name.startswith(GYM_PREFIX):
        from crossq_gpu.envs.gymnasium import GymVecEnv
        kwargs.pop("episode_length", None)
        return GymVecEnv(name[len(GYM_PREFIX):], num_envs, device, seed, **kwargs)
    if name.startswith(PLAYGROUND_PREFIX):
        from crossq_gpu.envs.playground import make_playground_env
        return make_playground_env(name[len(PLAYGROUND_PREFIX):], num_envs, device, seed, **kwargs)
    from crossq_gpu.envs.brax import make_brax_env
    return make_brax_env(name, num_envs, device, seed, backend, **kwargs)
