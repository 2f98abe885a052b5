"""Flags for a tiny, fast learner run on Pendulum, and readers of its output, shared by the end-to-end tests."""

import json
from pathlib import Path

SMALL = ["--env", "gym:Pendulum-v1", "--num-envs", "2", "--device", "cpu", "--preset", "cpu",
         "--set", "agent.critic_net.hidden=[32, 32]", "--set", "agent.net.hidden=[32, 32]",
         "--set", "agent.memory.batch_size=32", "--set", "agent.algorithm.training_start_step=200",
         "--set", "agent.critic_net.batch_renorm.warmup_steps=100",
         "--log-every", "100", "--eval-every", "300", "--eval-episodes", "2", "--no-compile"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    """A metrics row without its timings, which differ between identical runs."""
    return {k: v for k, v in row.items() if k not in ("wall_s", "sps", "ups")}
