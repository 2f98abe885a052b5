"""Short end-to-end runs that must learn (fixed seeds, CPU preset, each ~1–3 min on 2 cores).

Thresholds: CrossQ on Pendulum-v1 ≥ −250 within 15k env steps (here a
shorter budget), discrete CrossQ on CartPole-v1 ≥ 450, and the SAC baseline on Pendulum.
"""

import json
from pathlib import Path

import pytest

from crossq_gpu import learner

pytestmark = [pytest.mark.learning, pytest.mark.timeout(600)]


def best_eval(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    returns = [r["return_mean"] for r in rows if r["kind"] == "eval"]
    assert returns, "no evaluation rows"
    return max(returns)


def train(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "run"
    code = learner.main(["--preset", "cpu", "--device", "cpu", "--seed", "0", "--out", str(out),
                         "--eval-every", "1000", "--eval-episodes", "5", "--no-compile", *args])
    assert code == 0
    return out


@pytest.mark.slow
def test_crossq_learns_pendulum(tmp_path):
    out = train(tmp_path, "--env", "gym:Pendulum-v1", "--total-steps", "6000",
                "--set", "agent.algorithm.training_start_step=1000")
    assert best_eval(out) >= -250


@pytest.mark.slow
def test_discrete_crossq_learns_cartpole(tmp_path):
    out = train(tmp_path, "--env", "gym:CartPole-v1", "--total-steps", "5000",
                "--set", "agent.algorithm.training_start_step=1000")
    assert best_eval(out) >= 450


@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    out = train(tmp_path, "--env", "gym:Pendulum-v1", "--algo", "sac", "--total-steps", "10000",
                "--set", "agent.algorithm.training_start_step=1000")
    assert best_eval(out) >= -250


@pytest.mark.slow
def test_crossq_with_prioritized_replay_learns_pendulum(tmp_path):
    out = train(tmp_path, "--env", "gym:Pendulum-v1", "--total-steps", "6000",
                "--set", "agent.algorithm.training_start_step=1000",
                "--set", "agent.memory.name=PrioritizedReplay")
    assert best_eval(out) >= -250
