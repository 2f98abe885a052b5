"""A trained policy on its own: the actor and the env's action bounds, loaded from a checkpoint.

`Policy.predict` is what a user calls (numpy or torch in, the env's own actions out); `act`
is what evaluation feeds a VecEnv ([-1, 1] or indices, as VecEnv.step takes them); `forward`
is the deterministic obs -> env action map that `crossq_gpu.export` writes to a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossq_gpu.checkpoint import CheckpointError, load_checkpoint
from crossq_gpu.config import Config, ConfigError, from_dict
from crossq_gpu.envs.base import VecEnv, make_env
from crossq_gpu.networks import build_actor


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about its env; checkpoints store it under "env_spec"."""

    obs_dim: int
    act_dim: int | None
    num_actions: int | None
    action_low: list[float] | None
    """Continuous: the bounds [-1, 1] maps onto (the env's own units)."""
    action_high: list[float] | None
    action_start: int = 0
    """Discrete: the env's first action (gymnasium's Discrete(n, start))."""

    @classmethod
    def of(cls, env: VecEnv) -> EnvSpec:
        """Read from a VecEnv; one without action_low / action_high is taken to act in [-1, 1]."""
        low = high = None
        if env.num_actions is None:
            low = [float(x) for x in np.broadcast_to(getattr(env, "action_low", -1.0), (env.act_dim,))]
            high = [float(x) for x in np.broadcast_to(getattr(env, "action_high", 1.0), (env.act_dim,))]
        return cls(env.obs_dim, env.act_dim, env.num_actions, low, high, int(getattr(env, "action_start", 0)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Policy(nn.Module):
    """The actor of a run and the env's action bounds; no critic, optimizer or buffer."""

    def __init__(self, actor: nn.Module, spec: EnvSpec, config: Config) -> None:
        super().__init__()
        self.actor = actor
        self.spec, self.config = spec, config
        self.discrete = spec.num_actions is not None
        low = torch.tensor(spec.action_low or [], dtype=torch.float32)
        high = torch.tensor(spec.action_high or [], dtype=torch.float32)
        self.register_buffer("low", low)
        self.register_buffer("half_span", (high - low) * 0.5)
        self.eval().requires_grad_(False)  # inference only (every forward passes training=False anyway)

    @property
    def device(self) -> torch.device:
        return self.low.device

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True) -> Tensor:
        """[N, act_dim] in [-1, 1] or [N] indices from 0, as VecEnv.step takes them."""
        return self.actor.act(obs, deterministic)

    def to_env_units(self, action: Tensor) -> Tensor:
        """[-1, 1] -> [low, high]; an index -> the env's action number."""
        if self.discrete:
            return action + self.spec.action_start
        return self.low + (action + 1.0) * self.half_span

    def forward(self, obs: Tensor) -> Tensor:
        """Deterministic: [N, obs_dim] float32 -> [N, act_dim] in the env's bounds (or [N] int64)."""
        return self.to_env_units(self.actor.act(obs, True))

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True) -> Any:
        """Actions in the env's own bounds for obs [obs_dim] or [N, obs_dim].

        A numpy array (or anything array-like) gives a numpy array, a tensor gives a tensor on
        the tensor's device; the leading batch shape is kept ([act_dim] or [N, act_dim]; for
        discrete envs [] or [N] integers).
        """
        as_tensor = isinstance(obs, Tensor)
        x = (obs.to(self.device, torch.float32) if as_tensor
             else torch.tensor(np.asarray(obs, dtype=np.float32), device=self.device))
        if x.dim() not in (1, 2) or x.shape[-1] != self.spec.obs_dim:
            raise ValueError(f"obs must have shape [{self.spec.obs_dim}] or [N, {self.spec.obs_dim}], "
                             f"got {list(x.shape)}")
        action = self.to_env_units(self.act(x.reshape(-1, self.spec.obs_dim), deterministic))
        action = action[0] if x.dim() == 1 else action
        return action.to(obs.device) if as_tensor else action.cpu().numpy()


def load_policy(run_dir_or_checkpoint: str | Path, device: str | torch.device = "cpu") -> Policy:
    """The policy of a run folder or a checkpoint.pt, on `device`; CheckpointError if unusable.

    Checkpoints record their env's spaces; older ones, which do not, get them by building
    one copy of the env named in their config.
    """
    payload = load_checkpoint(Path(run_dir_or_checkpoint))
    try:
        cfg = from_dict(payload["config"])
        spec = EnvSpec(**payload["env_spec"]) if "env_spec" in payload else _spec_from_env(cfg)
        actor = build_actor(spec.obs_dim, spec.act_dim, spec.num_actions, cfg.agent.net,
                            cfg.agent.critic_net.batch_renorm)
        prefix = "actor."
        actor.load_state_dict({k[len(prefix):]: v for k, v in payload["agent"].items() if k.startswith(prefix)})
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{run_dir_or_checkpoint}: no usable policy in the checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return Policy(actor, spec, cfg).to(device)


def _spec_from_env(cfg: Config) -> EnvSpec:
    env = make_env(cfg.env.name, 1, "cpu", backend=cfg.env.backend, episode_length=cfg.env.episode_length)
    try:
        return EnvSpec.of(env)
    finally:
        env.close()
