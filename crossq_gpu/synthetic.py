"""Random replay data and an `Update` on it: the update without an env, for benchmarks and tests."""

from __future__ import annotations

import dataclasses

import torch

from crossq_gpu.buffer import ReplayBuffer, make_buffer
from crossq_gpu.config import Config, MemoryConfig
from crossq_gpu.distributed import Ranks, sync_batch_renorm
from crossq_gpu.networks import build_agent
from crossq_gpu.update import Update


def random_buffer(memory: MemoryConfig, obs_dim: int, act_dim: int | None, num_actions: int | None, size: int,
                  per_add: int, device: torch.device, done_prob: float, n_step: int = 1,
                  gamma: float = 1.0) -> ReplayBuffer:
    """The buffer `memory` names (uniform or prioritized), `size` slots filled with random
    transitions (actions uniform, a termination with probability `done_prob`, and for n-step
    returns a truncation too), added `per_add` at a time from torch's global generator."""
    discrete = num_actions is not None
    buffer = make_buffer(dataclasses.replace(memory, max_size=size), obs_dim, () if discrete else (act_dim,),
                         per_add, device, action_dtype=torch.int64 if discrete else torch.float32,
                         n_step=n_step, gamma=gamma)
    for _ in range(size // per_add):
        obs = torch.randn(per_add, obs_dim, device=device)
        action = (torch.randint(num_actions, (per_add,), device=device) if discrete
                  else torch.rand(per_add, act_dim, device=device) * 2 - 1)
        truncated = torch.rand(per_add, device=device) < done_prob if n_step > 1 else None
        buffer.add(obs, action, torch.randn(per_add, device=device), torch.randn(per_add, obs_dim, device=device),
                   (torch.rand(per_add, device=device) < done_prob).float(), truncated)
    return buffer


def random_update(cfg: Config, obs_dim: int, act_dim: int | None, num_actions: int | None = None, *,
                  device: torch.device = torch.device("cpu"), ranks: Ranks = Ranks(), size: int = 64,
                  per_add: int = 8, done_prob: float = 0.1) -> Update:
    """cfg's agent, data-parallel over `ranks`, and its Update on a `random_buffer`; the agent
    is built first, so a seed set before the call fixes its initial weights."""
    agent = build_agent(cfg, obs_dim, act_dim, num_actions).to(device)
    sync_batch_renorm(agent, ranks)
    alg = cfg.agent.algorithm
    buffer = random_buffer(cfg.agent.memory, obs_dim, act_dim, num_actions, size, per_add, device, done_prob,
                           alg.n_step, alg.gamma)
    return Update(agent, buffer, cfg, device, ranks)
