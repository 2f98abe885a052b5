"""The learner end to end on Gymnasium: exact resume, bad input, NaN handling, outputs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crossq_gpu import learner, losses
from crossq_gpu.checkpoint import load_checkpoint
from tests.small_run import SMALL, comparable, rows

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_metrics() -> list[tuple[str, str, str]]:
    """(field, row kind, TensorBoard tag or "") for each line of README's table of the metrics rows."""
    lines = README.read_text().splitlines()
    start = lines.index("| field | row | TensorBoard | meaning |") + 2
    documented = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, kinds, tag = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
        documented += [(name, kind.strip(), tag) for kind in kinds.split(",")]
    return documented


def test_outputs_and_metrics_rows(tmp_path, capsys):
    out = tmp_path / "run"
    assert learner.main([*SMALL, "--total-steps", "600", "--out", str(out)]) == 0
    assert "using the cpu preset (critics 32x32;" in capsys.readouterr().out  # what --set chose, not the preset's
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["env"]["name"] == "gym:Pendulum-v1" and cfg["agent"]["critic_net"]["hidden"] == [32, 32]
    assert cfg["agent"]["algorithm"]["action_pdtype"] == "auto"  # the env decides; the saved config stays as given
    train = [r for r in rows(out) if r["kind"] == "train"]
    evals = [r for r in rows(out) if r["kind"] == "eval"]
    assert [r["env_steps"] for r in train] == [100, 200, 300, 400, 500, 600]
    assert set(train[0]) == {"kind", "env_steps", "grad_steps", "wall_s", "sps", "ups", "return_mean",
                             "critic_loss", "actor_loss", "alpha", "q_mean", "entropy"}
    assert train[0]["critic_loss"] is None and train[-1]["critic_loss"] is not None
    assert train[0]["entropy"] is None and isinstance(train[-1]["entropy"], float)
    documented = readme_metrics()
    assert set(train[0]) == {name for name, kind, _ in documented if kind == "train"}
    assert set(evals[0]) == {name for name, kind, _ in documented if kind == "eval"}
    events = EventAccumulator(str(out))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {tag for _, _, tag in documented if tag}
    assert train[-1]["grad_steps"] == (600 - 200) // 2 + 1  # one update per vector step from step 200
    assert [r["env_steps"] for r in evals] == [300, 600] and all(r["episodes"] == 2 for r in evals)
    assert any(r["return_mean"] is not None for r in train)  # Pendulum episodes are 200 steps
    assert list(out.glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(out)
    assert ckpt["counters"]["env_steps"] == 600


def test_resume_is_exact(tmp_path):
    """N steps, checkpoint, resume to 2N == one uninterrupted 2N run (same seed, CPU)."""
    common = [*SMALL, "--save-buffer", "--checkpoint-every", "100000"]
    assert learner.main([*common, "--total-steps", "800", "--out", str(tmp_path / "full")]) == 0
    assert learner.main([*common, "--total-steps", "400", "--out", str(tmp_path / "part")]) == 0
    assert learner.main(["--resume", str(tmp_path / "part"), "--total-steps", "800"]) == 0
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert part["counters"]["env_steps"] == 800
    for name, value in full["agent"].items():
        assert torch.equal(value, part["agent"][name]), name
    assert [comparable(r) for r in rows(tmp_path / "full")] == [comparable(r) for r in rows(tmp_path / "part")]


def test_nan_loss_stops_with_the_step_and_last_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(losses, "td_target", lambda reward, *a: torch.full_like(reward, float("nan")))
    out = tmp_path / "run"
    code = learner.main([*SMALL, "--total-steps", "1000", "--checkpoint-every", "100", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == learner.EXIT_NONFINITE
    assert "NaN/Inf loss at gradient step 1" in err and "env step 100" in err and "checkpoint.pt" in err
    good = load_checkpoint(out)
    assert good["counters"]["env_steps"] == 100
    assert all(torch.isfinite(v).all() for v in good["agent"].values() if v.is_floating_point())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossq_gpu.learner", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


BAD_INPUT = [
    (["--env", "gym:NoSuchEnv-v0"], "unknown environment"),
    (["--env", "no_such_env"], "unknown environment"),
    (["--num-envs", "0"], "num_envs"),
    (["--num-envs", "-3"], "num_envs"),
    (["--set", "agent.memory.bogus=1"], "agent.memory.bogus"),
    (["--algo", "ppo"], "invalid choice"),
    (["--total-steps", "ten"], "invalid int value"),
]


def bad_run(tmp_path: Path, args: list[str]) -> list[str]:
    return [*SMALL, "--total-steps", "100", "--out", str(tmp_path / "run"), *args]


def assert_one_clear_line(code: int, stderr: str, fragment: str, out_root: Path) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert not list(out_root.rglob("checkpoint.pt*"))


def test_bad_input_on_the_command_line_is_one_clear_line(tmp_path):
    """The real `python -m` entry point, once (a process start costs ~5 s); the cases below run in-process."""
    args, fragment = BAD_INPUT[0]
    result = cli(*bad_run(tmp_path, args), cwd=tmp_path)
    assert_one_clear_line(result.returncode, result.stderr, fragment, tmp_path)


@pytest.mark.parametrize("args, fragment", BAD_INPUT)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, fragment):
    try:
        code = learner.main(bad_run(tmp_path, args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert_one_clear_line(code, capsys.readouterr().err, fragment, tmp_path)


def test_flags_take_their_help_and_choices_from_the_config_fields(capsys):
    with pytest.raises(SystemExit):
        learner.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--total-steps TOTAL_STEPS Env steps, all envs counted; an absolute total, also on --resume." in text
    assert "--device {auto,cpu,cuda} auto: CUDA when torch sees a GPU, else the CPU." in text
    assert "--algo {crossq,sac} CrossQ: BRN critics, no target networks." in text
    assert "--save-buffer, --no-save-buffer Store the replay buffer in checkpoints (large)." in text
    args = learner.parse_args(["--algo", "sac", "--no-compile", "--seed", "4", "--preset", "cpu"])
    cfg, _ = learner.resolve_config(args)
    assert (cfg.agent.algorithm.name, cfg.run.compile, cfg.run.seed) == ("SAC", False, 4)


@pytest.mark.parametrize("pdtype, code", [("Categorical", learner.EXIT_USAGE), ("Normal", 0)])
def test_an_action_pdtype_the_env_contradicts_is_refused(tmp_path, capsys, pdtype, code):
    out = tmp_path / "run"
    args = [*SMALL, "--total-steps", "100", "--eval-every", "0", "--out", str(out),
            "--set", f"agent.algorithm.action_pdtype={pdtype}"]
    assert learner.main(args) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if code:
        assert err == ["error: agent.algorithm.action_pdtype=Categorical, but env gym:Pendulum-v1 has continuous "
                       "actions (Normal); leave it auto"]
        assert not (out / "checkpoint.pt").exists()
    else:
        assert yaml.safe_load((out / "config.yaml").read_text())["agent"]["algorithm"]["action_pdtype"] == "Normal"


def test_corrupt_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: {seed: 0}\n")
    (run / "checkpoint.pt").write_bytes(b"\x00not a checkpoint")
    result = cli("--resume", str(run), "--device", "cpu", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "corrupt" in result.stderr and result.stderr.count("\n") == 1
    assert (run / "checkpoint.pt").read_bytes() == b"\x00not a checkpoint"


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli(*SMALL, "--total-steps", "100", "--out", str(blocker / "run"), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot write" in result.stderr and result.stderr.count("\n") == 1


def test_interrupt_writes_a_checkpoint(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "crossq_gpu.learner", *SMALL, "--total-steps", "10000000",
                             "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == learner.EXIT_INTERRUPTED and "Traceback" not in err
    ckpt = load_checkpoint(out)
    assert ckpt["counters"]["env_steps"] > 0 and "checkpoint written" in err
