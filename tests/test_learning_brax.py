"""Learning checks on Brax: CrossQ balances `inverted_pendulum` with one env and with 64.

Settings chosen on a shared 2-core CPU (record: benchmarks/results/brax_inverted_pendulum_cpu.json):
one env, 1,000 random steps, critics 128×128 (half the `cpu` preset's width: a gradient step
costs about half, and the task needs no more), otherwise the algorithm as specified. Seeds
0, 1 and 2 reached 1000 by 4,000–5,000 env steps; seed 0 takes ~50 s alone (the test passed
in 47 s) and ~2.7 min beside another run on a busy machine, Brax compile included. torch
gets one thread: on two cores it and XLA otherwise spin against each other.
"""

from pathlib import Path

import pytest

from crossq_gpu import learner
from tests.small_run import rows

pytest.importorskip("brax")
pytestmark = [pytest.mark.learning, pytest.mark.timeout(480)]

# The settings of the committed record; the benchmark and this test must agree.
BRAX_INVERTED_PENDULUM = [
    "--env", "inverted_pendulum", "--num-envs", "1", "--preset", "cpu", "--device", "cpu",
    "--total-steps", "5000", "--eval-every", "1000", "--eval-episodes", "5", "--log-every", "500",
    "--set", "agent.algorithm.training_start_step=1000", "--set", "agent.critic_net.hidden=[128, 128]",
    "--no-compile",
]


@pytest.mark.slow
def test_crossq_learns_brax_inverted_pendulum(tmp_path: Path, one_torch_thread: None) -> None:
    out = tmp_path / "run"
    assert learner.main([*BRAX_INVERTED_PENDULUM, "--seed", "0", "--out", str(out)]) == 0
    returns = [r["return_mean"] for r in rows(out) if r["kind"] == "eval"]
    assert max(returns) >= 900, f"eval returns {returns}"


# 64 envs under the auto regime (batch 1024, 2 updates per vector step, BRN warmup 10 % of
# the run, α₀ 0.1), with 128-wide critics so that CI's 2 cores get through ~1,400 gradient
# steps in about 1.5 minutes. Random actions score ~18; the bar is a policy that balances for
# half an episode. Seeds 0-3 reached 1,000 by 35k-40k env steps (51-64 s of training) on an
# Intel Xeon. The run's outcome moves with the CPU (a shorter run of 25,600 steps passed a bar
# of 150 on one CI machine and peaked at 104 on another), so the bar sits two or three
# evaluations inside the run.
BRAX_64_ENVS = [
    "--env", "inverted_pendulum", "--num-envs", "64", "--preset", "auto", "--device", "cpu",
    "--total-steps", "51200", "--eval-every", "5120", "--eval-episodes", "5", "--log-every", "5120",
    "--checkpoint-every", "0", "--set", "agent.critic_net.hidden=[128, 128]", "--no-compile",
]


@pytest.mark.timeout(300)
def test_crossq_learns_brax_inverted_pendulum_with_64_envs(tmp_path: Path, one_torch_thread: None) -> None:
    out = tmp_path / "run"
    assert learner.main([*BRAX_64_ENVS, "--seed", "0", "--out", str(out)]) == 0
    returns = [r["return_mean"] for r in rows(out) if r["kind"] == "eval"]
    assert max(returns) >= 500, f"eval returns {returns}"
