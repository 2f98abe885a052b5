"""The small CrossQ/SAC setup the update tests share: 32×2 networks, batch 16, BRN warmup 2."""

import torch

from crossq_gpu.config import Config
from crossq_gpu.configure import build_config
from crossq_gpu.distributed import Ranks
from crossq_gpu.synthetic import random_update
from crossq_gpu.update import Update

OBS, ACT, N_ACTIONS, B = 5, 2, 3, 16


def small_config(*overrides: str, algo: str = "CrossQ") -> Config:
    """The cpu preset with 32×2 actor and critics, batch B, a BRN warmup of 2 steps, no compile;
    `overrides` (`--set` syntax) come last and win."""
    cfg, _ = build_config("cpu", False, overrides=[
        f"agent.algorithm.name={algo}", "agent.critic_net.hidden=[32, 32]", "agent.net.hidden=[32, 32]",
        f"agent.memory.batch_size={B}", "agent.critic_net.batch_renorm.warmup_steps=2", "run.compile=false",
        *overrides])
    return cfg


def small_update(*overrides: str, algo: str = "CrossQ", discrete: bool = False, device: str = "cpu",
                 ranks: Ranks = Ranks()) -> Update:
    """An Update of `small_config(*overrides)` on 64 random transitions (OBS, ACT or N_ACTIONS)."""
    return random_update(small_config(*overrides, algo=algo), OBS, None if discrete else ACT,
                         N_ACTIONS if discrete else None, device=torch.device(device), ranks=ranks)
