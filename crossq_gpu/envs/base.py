"""The one environment protocol the learner sees, and the name → backend dispatch.

Names: `gym:ID` (Gymnasium, CPU vector env, also the discrete path; `gym:package/Env-v0`
imports `package` first, for its gym.register calls), `playground:NAME` (MuJoCo Playground
DMC envs, if installed), `package.module:factory` (the user's own env, built by calling
the factory), anything else a Brax env name. Backend modules are imported lazily so that
`import crossq_gpu` never imports JAX.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any, Protocol, runtime_checkable

import torch

GYM_PREFIX = "gym:"
PLAYGROUND_PREFIX = "playground:"
# config.yaml's env.name for an env object handed to crossq_gpu.train that no name rebuilds.
PYTHON_PREFIX = "python:"
FACTORY_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class UnknownEnvError(ValueError):
    """An env name no backend knows; the message lists the known names."""


class EnvSourceError(ValueError):
    """The user's own env (an object, a factory or its module:factory name) cannot be built."""


@runtime_checkable
class VecEnv(Protocol):
    """N auto-resetting envs stepped together; every tensor is torch, on `device`.

    `step(action)` takes [N, act_dim] float in [-1, 1] (scaled to the env's bounds inside)
    or [N] int64 for discrete envs, and returns obs [N, obs_dim] (already reset where an
    episode ended), reward [N] float32, terminated [N] bool, truncated [N] bool (time limit,
    never also terminated) and info with info["final_obs"] [N, obs_dim]: the true last
    observation where terminated | truncated and equal to obs elsewhere, so s' is always
    info["final_obs"]. Returned tensors may share memory with the env: treat them as read-only.

    `max_episode_steps` is the time limit (None: none): evaluation stops with an error when an
    episode runs past it, rather than looping forever.

    Optional: `action_low` / `action_high` ([act_dim] arrays, the bounds [-1, 1] is scaled
    onto; [-1, 1] when absent) and `action_start` (discrete: the env's first action, 0 when
    absent), which checkpoints record so that a loaded policy acts in the env's own units.
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
        _import_gym_namespace(name[len(GYM_PREFIX):])
        return GymVecEnv(name[len(GYM_PREFIX):], num_envs, device, seed, **kwargs)
    if name.startswith(PLAYGROUND_PREFIX):
        from crossq_gpu.envs.playground import make_playground_env
        return make_playground_env(name[len(PLAYGROUND_PREFIX):], num_envs, device, seed, **kwargs)
    if name.startswith(PYTHON_PREFIX):
        raise EnvSourceError(f"{name} was an env object passed to crossq_gpu.train, which no name rebuilds: "
                             "pass the object to crossq_gpu.train again, or name a factory as module:function")
    if FACTORY_NAME.fullmatch(name):
        from crossq_gpu.envs.custom import source_from_name
        return source_from_name(name).make(num_envs, device, seed, backend=backend, **kwargs)
    from crossq_gpu.envs.brax import make_brax_env
    return make_brax_env(name, num_envs, device, seed, backend, **kwargs)


def _import_gym_namespace(env_id: str) -> None:
    """`package/Env-v0`: import `package` for its gym.register side effects (a namespace that
    is no module, like ALE, is left to gymnasium)."""
    namespace, sep, _ = env_id.rpartition("/")
    if not sep:
        return
    try:
        importlib.import_module(namespace)
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name == namespace or namespace.startswith(f"{exc.name}.")):
            return
        raise EnvSourceError(f"gym:{env_id}: importing {namespace} failed ({one_line(exc)})") from None


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for errors that must stay one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
