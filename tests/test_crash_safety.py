"""Crash safety of a run folder: kills at any moment, torn records, a full disk.

The reference for "nothing was lost but the steps since the last checkpoint" is a run that
was never killed: with --save-buffer a resume continues bit for bit (see test_learner's
exact-resume test), so a run killed and resumed any number of times must end in the same
state and the same records.
"""

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossq_gpu import atomic, learner
from crossq_gpu.checkpoint import CheckpointError, load_checkpoint
from crossq_gpu.distributed import Ranks
from crossq_gpu.metrics import cut_records, describe_cut
from crossq_gpu.training import Run
from tests.small_run import SMALL, comparable, rows

TOTAL = 2000
FLAGS = [*SMALL, "--save-buffer", "--checkpoint-every", "400", "--total-steps", str(TOTAL)]


# --- the pieces -------------------------------------------------------------------------


def test_atomic_write_syncs_the_folder_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    (tmp_path / "config.yaml.k1ll3d.tmp").write_text("left by a killed writer")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd)))
    atomic.atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old" and synced == [False, True]  # the file, then its folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~atomic._umask()

    def fill_the_disk(f):
        f.write(b"half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        atomic.atomic_write(path, fill_the_disk)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temp file, old or new


def test_cut_records_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "env_steps": s, "return_mean": None}) + "\n" for s in range(100, 700, 100)]
    lines.insert(3, json.dumps({"kind": "eval", "env_steps": 300, "return_mean": -1.5}) + "\n")
    lines.append(json.dumps({"kind": "eval", "env_steps": 600, "return_mean": -1.0}) + "\n")
    path.write_text("".join(lines) + '{"kind": "train", "env_st')
    assert cut_records(path, 400) == (3, 1)  # train 500, 600, eval 600; the torn line
    assert path.read_text() == "".join(lines[:5])  # the kept rows, byte for byte
    assert cut_records(path, 400) == (0, 0) and cut_records(tmp_path / "none.jsonl", 400) == (0, 0)
    assert describe_cut(400, 3, 1) == ("resuming at env step 400: dropped 3 metric rows written after the "
                                       "checkpoint and 1 torn line")
    assert describe_cut(400, 0, 0) is None


def test_a_new_run_in_a_used_folder_replaces_its_records(tmp_path, capsys):
    once, twice = tmp_path / "once", tmp_path / "twice"
    for out in (once, twice, twice):
        assert learner.main([*SMALL, "--total-steps", "300", "--out", str(out)]) == 0
    assert "starting at env step 0: dropped 4 metric rows written by an earlier run in this folder" \
        in capsys.readouterr().out  # train 100, 200, 300 and eval 300
    assert [comparable(r) for r in rows(twice)] == [comparable(r) for r in rows(once)]


def test_a_full_disk_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * 4096)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    out = tmp_path / "run"
    code = learner.main([*SMALL, "--total-steps", "1000", "--checkpoint-every", "100", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == learner.EXIT_NONFINITE
    assert err == (f"error: cannot write the checkpoint at env step 200 (No space left on device); training "
                   f"stopped; the last good checkpoint is {out / 'checkpoint.pt'} (env step 100)\n")
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out)["counters"]["env_steps"] == 100
    assert not list(out.glob("*.tmp"))


class OtherRankAtStart(Ranks):
    """One rank of two, whose (simulated) peer read a checkpoint of env step 0."""

    def min(self, value: int) -> int:
        return min(value, 0)


def test_ranks_that_read_different_checkpoints_refuse_to_resume(tmp_path):
    out = tmp_path / "run"
    assert learner.main([*SMALL, "--total-steps", "200", "--out", str(out)]) == 0
    cfg, _ = learner.resolve_config(learner.parse_args(["--resume", str(out)]))
    run = Run(cfg, out, torch.device("cpu"), OtherRankAtStart())
    with pytest.raises(CheckpointError, match="env steps 0 to 200: every rank must resume from the same"):
        run.restore(load_checkpoint(out))


# --- kills at random moments ----------------------------------------------------------


def start(run: Path, log: Path, fresh: list[str]) -> subprocess.Popen:
    """Resume the run if it has a checkpoint, else start it with `fresh`: what a requeued job does."""
    args = ["--resume", str(run), "--total-steps", str(TOTAL)] if (run / "checkpoint.pt").exists() else fresh
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "crossq_gpu.learner", *args], stdout=f, stderr=f,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def temp_files(run: Path) -> set[Path]:
    return set(run.glob("checkpoint.pt.*.tmp"))


def last_step(run: Path, since: float) -> int:
    """The env step of the last row written after `since` (time.time()); 0 if none yet.

    Before a resumed process cuts the records, their last row is one the kill left behind.
    """
    path = run / "metrics.jsonl"
    try:
        if path.stat().st_mtime < since:
            return 0
        return json.loads(path.read_bytes().splitlines()[-1])["env_steps"]
    except (OSError, IndexError, ValueError):
        return 0


def kill(proc: subprocess.Popen, run: Path, moment: tuple[str, float]) -> bool:
    """SIGKILL at `moment`: ("write", 0) while a checkpoint write replaces checkpoint.pt,
    ("step", s) once the records reach env step s, ("time", t) t seconds after the start.

    Returns whether the kill left a half-written checkpoint behind.
    """
    kind, at = moment
    before, started = temp_files(run), time.time()

    def due() -> bool:
        if kind == "write":
            return bool(temp_files(run) - before) and (run / "checkpoint.pt").exists()
        if kind == "step":
            return last_step(run, started) >= at
        return time.time() - started >= at

    while proc.poll() is None and time.time() - started < 60 and not due():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return bool(temp_files(run) - before)


def assert_records_consistent(run: Path) -> None:
    """Every line parses; per kind, env_steps strictly increase (one row per step and kind)."""
    if not (run / "metrics.jsonl").exists():
        return
    records = rows(run)  # json.loads on every line
    steps = [r["env_steps"] for r in records]
    assert steps == sorted(steps), steps
    for kind in ("train", "eval"):
        of_kind = [r["env_steps"] for r in records if r["kind"] == kind]
        assert all(a < b for a, b in zip(of_kind, of_kind[1:])), (kind, of_kind)


def assert_same_state(a, b, where: str = "checkpoint") -> None:
    """Equal bit for bit: tensors with torch.equal, containers item by item."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows, timings left out (they differ between identical runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag not in ("charts/sps", "charts/ups")}


@pytest.mark.timeout(300)
def test_killed_at_random_moments_and_resumed_equals_a_run_never_killed(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert start(reference, tmp_path / "reference.log", [*FLAGS, "--out", str(reference)]).wait(timeout=120) == 0

    rng = random.Random(0)
    kinds = ["write", "write", "step", "step", "step", "time"]
    rng.shuffle(kinds)
    mid_write, checkpoint_step = 0, 0
    for i, kind in enumerate(kinds):
        at = {"write": 0, "step": rng.randrange(checkpoint_step + 100, TOTAL, 100),
              "time": rng.uniform(0.5, 3.0)}[kind]  # "time": mostly before training, in start-up or resume
        mid_write += kill(start(run, tmp_path / f"{i}.log", [*FLAGS, "--out", str(run)]), run, (kind, at))
        if (run / "checkpoint.pt").exists():
            step = load_checkpoint(run)["counters"]["env_steps"]  # whole, whatever the kill hit
            assert step >= checkpoint_step
            checkpoint_step = step
        assert_records_consistent(run)
    assert mid_write >= 1, "no kill landed inside a checkpoint write"

    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "env_steps": 9')  # as a power loss can leave the last append
    final = start(run, tmp_path / "final.log", [*FLAGS, "--out", str(run)])
    assert final.wait(timeout=120) == 0, (tmp_path / "final.log").read_text()[-2000:]
    log = (tmp_path / "final.log").read_text()
    assert f"at env step {checkpoint_step}: dropped" in log and "1 torn line" in log, log

    assert_records_consistent(run)
    assert [comparable(r) for r in rows(run)] == [comparable(r) for r in rows(reference)]
    assert tensorboard_scalars(run) == tensorboard_scalars(reference)
    ours, theirs = load_checkpoint(run), load_checkpoint(reference)
    for payload in (ours, theirs):
        payload["counters"].pop("wall_s")
    assert_same_state(ours, theirs)
    assert not temp_files(run)  # the next write cleared what a kill left
