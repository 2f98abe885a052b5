"""benchmarks.parallel_envs reads its runs the way its targets are stated, and a run that
hangs does not hang the benchmark."""

import json
import sys
import time
from pathlib import Path

from benchmarks import parallel_envs, time_to_return
from crossq_gpu.config import to_dict


def test_parallel_envs_compares_sizes_at_the_nearest_eval() -> None:
    """Runs of ~1,000 gradient steps evaluate on grids a few percent apart: each size is read at
    its eval nearest the common step count, not at the last one before it (a tenth of a run early)."""

    def row(n: int, curve: list[tuple[int, float]]) -> dict:
        return {"part": "sweep", "env": "ant", "algo": "crossq", "num_envs": n,
                "curve": [{"grad_steps": g, "return": r} for g, r in curve]}

    rows = [row(1, [(901, 100.0), (1001, 150.0)]), row(16, [(852, 90.0), (1016, 250.0)]),
            row(256, [(932, 300.0), (1036, 800.0)])]
    verdicts = parallel_envs.targets(rows, [])
    assert "met: ant crossq at 1001 gradient steps, 1 envs 150 <= 16 envs 250 <= 256 envs 800" in verdicts
    rows[1]["curve"][-1]["return"] = 120.0
    assert any(v.startswith("missed: ant crossq") for v in parallel_envs.targets(rows, []))


def test_parallel_envs_kills_a_run_that_ignores_its_budgets_sigterm(tmp_path: Path, monkeypatch, capsys) -> None:
    """A learner hung inside XLA never runs Python's SIGTERM handler. The benchmark kills it
    after a grace period and records the run with no curve, instead of waiting forever, and
    a later invocation runs it again rather than reusing it."""
    hung = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    monkeypatch.setattr(parallel_envs, "RUNS_DIR", tmp_path)
    monkeypatch.setattr(time_to_return, "KILL_GRACE_S", 1.0)
    monkeypatch.setattr(parallel_envs, "command", lambda spec: hung)
    spec = parallel_envs.Spec("sweep", "ant", 16, "crossq", 0, 10, "cpu")
    start = time.perf_counter()
    row = parallel_envs.run(spec, budget_s=1.0)
    assert time.perf_counter() - start < 30
    assert row["curve"] == [] and row["stopped_at_budget"] and row["sps"] is None
    assert f"killed {spec.name}" in capsys.readouterr().out
    assert json.loads((tmp_path / spec.name / "run.json").read_text())["process"]["stopped_at_budget"]


def test_every_lever_is_a_valid_change_to_the_rule() -> None:
    """A lever's `--set` paths and values make a valid config that differs from the rule's,
    so a typo fails here, not an hour into a benchmark run."""
    def resolved(lever: str) -> dict:
        spec = parallel_envs.Spec("lever", "halfcheetah", 128, "crossq", 0, 5000, "cpu", lever)
        return to_dict(parallel_envs.regime(spec))

    rule = resolved("rule")
    for lever in parallel_envs.LEVERS:
        if lever != "rule":
            assert resolved(lever) != rule, lever
