"""benchmarks/gpu_check.sh and benchmarks/learner_check.py, run on a CPU.

The script runs from a copy in a temporary folder, with stub steps in place of the GPU work,
so these tests check its own mechanics: the budget, per-step limits and kills, results copied
into $OUT as each step ends, and a stop from outside that keeps them.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import unittest.mock
from pathlib import Path

import pytest

from benchmarks import update_throughput
from benchmarks.learner_check import steady_state
from crossq_gpu import learner

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300

# A stand-in for every step: what each writes, and how it ends.
STUB = """
case $1 in
  brn) echo '{"rows": [1]}' > benchmarks/results/brn_kernel_fake_gpu.json ;;
  tests_fast_path) echo "a failing test"; exit 3 ;;
  update) echo '{"rows": []}' > benchmarks/results/update_throughput_fake_gpu.json
          trap '' TERM; sleep 60 ;;  # ignores SIGTERM: needs the SIGKILL that follows
  learner) echo '{"rows": []}' > benchmarks/results/learner_check_fake_gpu.json
           mkdir -p runs/learner_check-x; echo '{}' > runs/learner_check-x/metrics.jsonl
           touch learner.started; sleep 60 ;;
  *) echo "$1 ran" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The script in a bare tree with a carried gpu_kit/, an old result and the stub."""
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "benchmarks")
    (tmp_path / "gpu_kit").mkdir()
    old = tmp_path / "benchmarks" / "results" / "brn_kernel_cpu.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 3600,) * 2)
    (tmp_path / "stub.sh").write_text(STUB)
    return tmp_path


def script_env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "OUT": str(checkout / "out"), "PY": sys.executable}


def gpu_check(checkout: Path, *args: str, limit_s: int | None = None, **popen: object) -> subprocess.Popen:
    env = {**script_env(checkout), "GPU_CHECK_STUB": "bash stub.sh"}
    if limit_s is not None:
        env["GPU_CHECK_LIMIT_S"] = str(limit_s)
    return subprocess.Popen(["bash", "benchmarks/gpu_check.sh", *args], cwd=checkout, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]


def plan(checkout: Path, *steps: str) -> tuple[dict[str, tuple[int, str]], int]:
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--plan", *steps], cwd=checkout, capture_output=True,
                         text=True, check=True, env=script_env(checkout)).stdout
    rows = {m[1]: (int(m[2]), m[3]) for m in re.finditer(r"^(\S+)\s+(\d+) s  (.*)$", out, re.M)}
    return rows, int(re.search(r"^total (\d+) s", out, re.M)[1])  # type: ignore[index]


def test_plan_fits_the_budget_with_install(checkout: Path) -> None:
    steps, total = plan(checkout)
    assert list(steps) == ["install", "info", "tests_fast_path", "tests_triton_brn", "brn", "update", "learner",
                           "targets"]
    assert total == sum(limit + 5 for limit, _ in steps.values()) <= BUDGET_S
    assert "--target /tmp/site --no-index --no-deps --no-compile" in steps["install"][1]
    for name in ("tests_fast_path", "tests_triton_brn"):
        assert all(flag in steps[name][1] for flag in ("-x", "--tb=short", f"--junitxml={checkout}/out/{name}.xml"))
    learner_s = float(re.search(r"--seconds (\S+)", steps["learner"][1])[1])  # type: ignore[index]
    assert learner_s + 10 <= steps["learner"][0], "the learner needs time to stop, checkpoint and report"


def test_plan_update_step_times_one_compiled_variant(checkout: Path) -> None:
    """One width, one batch, graphed only, no extra variants or baselines: a single compile."""
    command = shlex.split(plan(checkout)[0]["update"][1])
    args = update_throughput.parser().parse_args(command[command.index("benchmarks.update_throughput") + 1:])
    assert (len(args.widths), len(args.batch_sizes), args.modes, len(args.algos)) == (1, 1, ["graphed"], 1)
    assert args.variants == [] and args.compare == []


@pytest.mark.parametrize("step", ["learner", "overlap"])
def test_plan_learner_step_resolves_to_the_4096_env_gpu_regime(checkout: Path, step: str) -> None:
    """The learner flags the check passes make a valid CUDA config: batch and width as the update step's;
    the overlap step (on request) is the same run with the env stepping during the updates."""
    command = shlex.split(plan(checkout, step)[0][step][1])
    if step == "overlap":  # its own results file, beside the learner step's
        assert command[command.index("--name") + 1] == "learner_check_overlap"
    args = learner.parse_args(command[command.index("--") + 1:])
    with unittest.mock.patch("torch.cuda.is_available", return_value=True):
        cfg, preset = learner.resolve_config(args)
    update = shlex.split(plan(checkout)[0]["update"][1])
    widths = update[update.index("--widths") + 1]
    batch = update[update.index("--batch-sizes") + 1]
    assert (preset, cfg.env.num_envs, cfg.run.overlap) == ("paper", 4096, step == "overlap")
    assert cfg.agent.memory.batch_size == int(batch) and cfg.agent.critic_net.hidden == [int(widths)] * 2


def test_selection_over_the_budget_or_unknown_is_refused(checkout: Path) -> None:
    _, total = plan(checkout, "tests", "brn", "update", "learner", "env")
    assert total > BUDGET_S
    for steps, message in ((["tests", "brn", "update", "learner", "env"], "over the 300 s budget"),
                           (["bogus"], "unknown step 'bogus'")):
        proc = gpu_check(checkout, *steps)
        assert proc.wait(timeout=30) == 2 and message in proc.stdout.read()  # type: ignore[union-attr]
        assert not (checkout / "out").exists()


def test_steps_are_limited_killed_and_collected(checkout: Path) -> None:
    start = time.monotonic()
    proc = gpu_check(checkout, limit_s=2)
    stdout = proc.communicate(timeout=60)[0]
    out = checkout / "out"
    log = (out / "gpu_check.log").read_text()
    assert proc.returncode == 1, stdout
    # Each step ran, in order, past the failing one; the limits cut the two that hang.
    assert re.findall(r"^== (\w+): exit (\d+)", log, re.M) == [
        ("install", "0"), ("info", "0"), ("tests_fast_path", "3"), ("tests_triton_brn", "0"), ("brn", "0"),
        ("update", "137"), ("learner", "124"), ("targets", "0")]
    assert "a failing test" in log and "targets ran" in log
    assert time.monotonic() - start < 30  # `sleep 60` twice was cut: SIGTERM at 2 s, SIGKILL at 2 + 5 s
    # Results written during this run, also by killed steps, and nothing older; a flat, small $OUT.
    files = sorted(p.name for p in out.rglob("*"))
    assert files == ["brn_kernel_fake_gpu.json", "gpu_check.log", "learner_check_fake_gpu.json", "metrics.jsonl",
                     "update_throughput_fake_gpu.json"]
    assert "failed: tests_fast_path update learner" in stdout


def test_a_stop_from_outside_keeps_the_running_steps_results(checkout: Path) -> None:
    proc = gpu_check(checkout, "learner", start_new_session=True)
    deadline = time.monotonic() + 30
    while not (checkout / "learner.started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the learner step never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert {p.name for p in (checkout / "out").iterdir()} == {"gpu_check.log", "learner_check_fake_gpu.json",
                                                             "metrics.jsonl"}
    assert "stopped by a signal" in (checkout / "out" / "gpu_check.log").read_text()


# --- learner_check ---------------------------------------------------------------------------


def test_steady_state_starts_after_the_row_with_the_first_updates() -> None:
    rows = [{"kind": "train", "env_steps": 4096, "grad_steps": 0, "wall_s": 9.0},   # JAX compile, random actions
            {"kind": "train", "env_steps": 8192, "grad_steps": 8, "wall_s": 40.0},  # + torch compiles, captures
            {"kind": "eval", "env_steps": 8192, "return_mean": 1.0},
            {"kind": "train", "env_steps": 12288, "grad_steps": 24, "wall_s": 41.0},
            {"kind": "train", "env_steps": 20480, "grad_steps": 56, "wall_s": 42.0}]
    assert steady_state(rows) == {"sps": 6144.0, "ups": 24.0, "from_wall_s": 40.0, "window_s": 2.0, "rows": 2}
    assert steady_state(rows[:3]) is None  # nothing after the compiles
    assert steady_state(rows[:1]) is None


def test_learner_check_stops_the_learner_and_reports(tmp_path: Path) -> None:
    """A short CPU run: stopped on time through the learner's own signal handling, steady state measured."""
    script = ("import sys; from pathlib import Path; import benchmarks.common as c; "
              f"c.RESULTS_DIR = Path({str(tmp_path)!r}); from benchmarks.learner_check import main; sys.exit(main())")
    argv = ["--seconds", "4", "--", "--env", "gym:Pendulum-v1", "--num-envs", "1", "--log-every", "50",
            "--set", "agent.algorithm.training_start_step=50", "--eval-every", "0", "--checkpoint-every", "0"]
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script, *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads((tmp_path / "learner_check_cpu.json").read_text())
    assert doc["learner_exit"] == 130 and doc["memory"] == {}
    assert doc["steady"]["sps"] > 0 and doc["steady"]["ups"] > 0 and doc["steady"]["window_s"] < 4
    assert time.monotonic() - start < 60
