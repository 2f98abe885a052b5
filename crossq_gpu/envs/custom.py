"""The user's own env behind the VecEnv protocol: an object, a factory, or a module:factory name.

Four kinds of object, and what each allows:
- a VecEnv instance: trained on as it is; its num_envs is the run's, and there is no second
  copy to evaluate on;
- a gymnasium.Env instance: one env (a SyncVectorEnv of one), no evaluation env either;
- a Brax/MJX-style env (reset(key) -> State, step(State, action) -> State, observation_size,
  action_size; State with obs, reward, done): stateless, so one object serves any number of
  training and evaluation copies, vmapped by JaxVecEnv;
- a zero-argument callable (a function, or a class) returning one of these: called wherever
  another env is needed (each Gymnasium sub-env, the evaluation env), which lifts the limits
  of a single instance; a VecEnv factory still fixes num_envs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from crossq_gpu.envs.base import PYTHON_PREFIX, EnvSourceError, VecEnv, one_line

ENV_KINDS = ("a VecEnv, a gymnasium.Env or a Brax-style env "
             "(reset(key) / step(state, action), observation_size, action_size)")


@dataclass
class EnvSource:
    """How a run builds its envs from the user's object."""

    name: str
    """What config.yaml records as env.name: module:qualname when the CLI can rebuild it."""
    make: Callable[..., VecEnv]
    """make_env's signature without the name: (num_envs, device, seed, backend=..., episode_length=...)."""
    num_envs: int | None = None
    """Fixed by the object (a VecEnv, a single Gymnasium env); None: any."""
    evaluable: bool = True
    """Whether a second env can be built to evaluate on."""


def env_source(env: Any, name: str | None = None) -> EnvSource:
    """The EnvSource for any of the four kinds; EnvSourceError for anything else."""
    kind = _kind(env)
    if kind is not None:
        return _instance_source(env, kind, name or _python_name(type(env)))
    if not callable(env):
        raise EnvSourceError(f"env must be a name, {ENV_KINDS}, or a zero-argument callable returning one; "
                             f"got {type(env).__name__}")
    name = name or describe(env)
    try:
        probe = env()
    except Exception as exc:
        raise EnvSourceError(f"env {name}: calling the factory failed ({one_line(exc)})") from None
    kind = _kind(probe)
    if kind is None:
        raise EnvSourceError(f"env {name}: the factory returned {type(probe).__name__}, not {ENV_KINDS}")
    return _factory_source(env, probe, kind, name)


def source_from_name(spec: str) -> EnvSource:
    """`package.module:factory` (the CLI's --env): import the module, find the callable."""
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise EnvSourceError(f"env {spec}: cannot import {module_name} ({one_line(exc)})") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise EnvSourceError(f"env {spec}: {module_name} has no attribute {qualname}")
        obj = getattr(obj, part)
    if not callable(obj) or _kind(obj) is not None:
        raise EnvSourceError(f"env {spec}: {qualname} must be a zero-argument callable returning an env")
    return env_source(obj, spec)


def describe(factory: Callable[[], Any]) -> str:
    """`module:qualname` when that name imports back to this callable (then the CLI can rebuild
    the env, and --resume or evaluate work from the shell), else `python:module.qualname`."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname:
        return _python_name(type(factory))
    if module != "__main__" and "<" not in qualname:
        obj: Any = sys.modules.get(module)  # None for code run by exec(), which no name imports
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is factory:
            return f"{module}:{qualname}"
    return f"{PYTHON_PREFIX}{module}.{qualname}"


def _python_name(cls: type) -> str:
    return f"{PYTHON_PREFIX}{cls.__module__}.{cls.__qualname__}"


def _kind(obj: Any) -> str | None:
    """"vec", "gym" or "brax" for an instance of a supported kind; None otherwise (classes too)."""
    if isinstance(obj, type):
        return None
    if isinstance(obj, VecEnv):
        return "vec"
    if isinstance(obj, gym.Env):
        return "gym"
    if all(hasattr(obj, a) for a in ("reset", "step", "observation_size", "action_size")):
        return "brax"
    return None


def _instance_source(env: Any, kind: str, name: str) -> EnvSource:
    if kind == "vec":
        return EnvSource(name, lambda n, device, seed=0, **_: _checked_vec(env, name, n, device),
                         num_envs=env.num_envs, evaluable=False)
    if kind == "gym":
        def one_gym_env(n: int, device: torch.device | str, seed: int = 0, **_: Any) -> VecEnv:
            if n != 1:
                raise EnvSourceError(f"env {name} is one gymnasium.Env instance and {n} envs were asked for: "
                                     "pass its class or a factory to run several")
            return _gym_vec(name, lambda: env, 1, device, seed)

        return EnvSource(name, one_gym_env, num_envs=1, evaluable=False)
    return EnvSource(name, lambda n, device, seed=0, **kw: _jax_vec(env, name, n, device, seed, **kw))


def _factory_source(factory: Callable[[], Any], probe: Any, kind: str, name: str) -> EnvSource:
    """The probe (the factory's first result) is the first env handed out, not built twice."""
    unused = [probe]

    def build() -> Any:
        env = unused.pop() if unused else factory()
        if _kind(env) != kind:
            raise EnvSourceError(f"env {name}: the factory returned {type(env).__name__} after {type(probe).__name__}")
        return env

    if kind == "vec":
        return EnvSource(name, lambda n, device, seed=0, **_: _checked_vec(build(), name, n, device),
                         num_envs=probe.num_envs)
    if kind == "gym":
        return EnvSource(name, lambda n, device, seed=0, **_: _gym_vec(name, build, n, device, seed))
    return EnvSource(name, lambda n, device, seed=0, **kw: _jax_vec(probe, name, n, device, seed, **kw))


def _checked_vec(env: VecEnv, name: str, num_envs: int, device: torch.device | str) -> VecEnv:
    if env.num_envs != num_envs:
        raise EnvSourceError(f"env {name} is a VecEnv of {env.num_envs} envs and {num_envs} were asked for: "
                             f"set num_envs={env.num_envs} (and eval_episodes={env.num_envs}, or eval_every=0)")
    if torch.device(env.device) != torch.device(device):
        raise EnvSourceError(f"env {name} is on {env.device} and the run on {device}: set the device to match")
    return env


def _gym_vec(name: str, make_one: Callable[[], gym.Env], num_envs: int, device: torch.device | str,
             seed: int) -> VecEnv:
    from crossq_gpu.envs.gymnasium import GymVecEnv

    return GymVecEnv(name, num_envs, torch.device(device), seed, make_one=make_one)


def _jax_vec(env: Any, name: str, num_envs: int, device: torch.device | str, seed: int,
             episode_length: int | None = None, **_: Any) -> VecEnv:
    """Actions scaled onto the actuator ranges of env.sys (Brax) or env.mj_model (MJX/Playground)
    when the env has one; [-1, 1] otherwise."""
    from crossq_gpu.envs.brax import DEFAULT_EPISODE_LENGTH, JaxVecEnv, ctrl_range_of

    model = getattr(env, "sys", None)
    if model is None:
        model = getattr(env, "mj_model", None)
    act_dim = int(env.action_size)
    ctrl = ctrl_range_of(model) if model is not None else np.tile([-1.0, 1.0], (act_dim, 1))
    return JaxVecEnv(env, num_envs, torch.device(device), seed, episode_length or DEFAULT_EPISODE_LENGTH,
                     ctrl, name)
