"""python -m crossq_gpu.evaluate on a real (tiny) run: JSON line, video, bad checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from crossq_gpu import learner
from crossq_gpu.checkpoint import load_checkpoint
from crossq_gpu.envs import make_env
from crossq_gpu.evaluate import evaluate, load_agent
from tests.small_run import SMALL


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert learner.main([*SMALL, "--total-steps", "300", "--out", str(out)]) == 0
    return out


def evaluate_cli(*args):
    return subprocess.run([sys.executable, "-m", "crossq_gpu.evaluate", *args], capture_output=True,
                          text=True, timeout=120)


def test_prints_one_json_line_matching_an_independent_rollout(run_dir):
    result = evaluate_cli(str(run_dir), "--episodes", "3", "--seed", "5", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["episodes"] == 3
    # Independent check: roll out each env's first episode by hand with the deterministic policy.
    env = make_env("gym:Pendulum-v1", 3, "cpu", seed=5)
    agent = load_agent(load_checkpoint(run_dir), env)
    obs, total = env.reset(seed=5), torch.zeros(3)
    for _ in range(200):  # Pendulum episodes are exactly 200 steps
        obs, reward, *_ = env.step(agent.act(obs, deterministic=True))
        total += reward
    assert stats["return_mean"] == pytest.approx(total.mean().item(), rel=1e-5)
    assert stats["return_std"] == pytest.approx(total.std(unbiased=False).item(), rel=1e-4)
    assert evaluate(agent, env, seed=5)[0] == pytest.approx(stats["return_mean"], rel=1e-5)


def test_video(run_dir, tmp_path):
    video = tmp_path / "pendulum.mp4"
    result = evaluate_cli(str(run_dir / "checkpoint.pt"), "--episodes", "1", "--device", "cpu",
                          "--video", str(video))
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 1000


def test_bad_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("garbage")
    result = evaluate_cli(str(tmp_path), "--device", "cpu")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "corrupt" in result.stderr


class StepCounter:
    """Two envs that declare a 3-step time limit, earn 1 per step and end together after `end_at` steps."""

    num_envs, obs_dim, act_dim, num_actions, max_episode_steps, device = 2, 1, 1, None, 3, torch.device("cpu")

    def __init__(self, end_at: int | None) -> None:
        self.end_at, self.t = end_at, 0

    def reset(self, seed=None):
        self.t = 0
        return torch.zeros(2, 1)

    def step(self, action):
        self.t += 1
        ended = torch.full((2,), self.t == self.end_at)
        no = torch.zeros(2, dtype=torch.bool)
        return torch.zeros(2, 1), torch.ones(2), no, ended, {"final_obs": torch.zeros(2, 1)}


class StandStill:
    def act(self, obs, deterministic=False):
        return torch.zeros(obs.shape[0], 1)


def test_an_env_past_its_time_limit_is_an_error_not_an_endless_evaluation():
    env = StepCounter(end_at=3)
    assert evaluate(StandStill(), env, seed=0) == (3.0, 0.0, 2) and env.t == 3
    env = StepCounter(end_at=None)
    with pytest.raises(ValueError, match="still running after 3 steps, but the env's max_episode_steps is 3"):
        evaluate(StandStill(), env, seed=0)
    assert env.t == 3
