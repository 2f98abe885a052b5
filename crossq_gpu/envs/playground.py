"""MuJoCo Playground DMC suite envs (`playground:NAME`) through the same JaxVecEnv as Brax.

Only the DeepMind Control suite: its models ship inside the package, while the locomotion and
manipulation envs download MuJoCo Menagerie assets at first use (not possible offline). The
package is optional (`pip install playground`, imported as mujoco_playground); we run its envs
with the JAX implementation of MJX (`impl="jax"`), as its default "warp" needs warp-lang and a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from crossq_gpu.envs.base import PLAYGROUND_PREFIX, unknown_env
from crossq_gpu.envs.brax import JaxVecEnv, ctrl_range_of, jax_module

_INSTALL = ("MuJoCo Playground envs need the `playground` package (pip install playground; "
            "it imports as mujoco_playground). Only its DMC suite envs work offline.")


def _registry() -> Any:
    jax_module()
    try:
        from mujoco_playground import registry
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    return registry


def playground_env_names() -> list[str]:
    return sorted(_registry().dm_control_suite.ALL_ENVS)


def make_playground_env(name: str, num_envs: int, device: torch.device, seed: int = 0,
                        episode_length: int | None = None, impl: str = "jax",
                        **config_overrides: Any) -> JaxVecEnv:
    """episode_length defaults to the env's config (1000 for DMC); overrides go to its config."""
    registry = _registry()
    if name not in registry.dm_control_suite.ALL_ENVS:
        raise unknown_env(PLAYGROUND_PREFIX + name)
    config = registry.get_default_config(name)
    config.impl = impl
    env = registry.load(name, config=config, config_overrides=config_overrides or None)
    return JaxVecEnv(env, num_envs, device, seed, episode_length or int(config.episode_length),
                     ctrl_range_of(env.mj_model), PLAYGROUND_PREFIX + name)
