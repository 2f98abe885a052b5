"""Data parallelism on CPU with gloo and 2 processes: synchronized BRN and the distributed update.

Each test spawns 2 ranks that rendezvous through a file; the ranks save what they computed
and the test compares it with one process that runs the same math on the concatenated
batch — the definition of what the distributed run must compute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossq_gpu import learner
from crossq_gpu.buffer import Batch
from crossq_gpu.checkpoint import load_checkpoint
from crossq_gpu.distributed import Ranks, RankSetupError, pin_local_gpu
from crossq_gpu.kernels import BatchRenorm1d, BrnParams
from crossq_gpu.update import Update
from tests.factories import ACT, N_ACTIONS, OBS, B, small_update
from tests.fixed_batches import FixedBatches
from tests.small_run import SMALL, comparable, rows

WORLD = 2
PARAMS = BrnParams(momentum=0.1, eps=1e-3, r_max=1.5, d_max=0.5, warmup_steps=4)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def spawn(fn, tmp_path: Path, *args) -> list[dict]:
    """Run fn(ranks, *args) on WORLD gloo ranks; returns what each rank returned."""
    mp.spawn(_rank_main, args=(fn, str(tmp_path), args), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _rank_main(rank: int, fn, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        ranks = Ranks(rank, WORLD, dist.group.WORLD, dist.group.WORLD)
        torch.save(fn(ranks, *args), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# --- synchronized BatchRenorm ------------------------------------------------------------

CASES = [  # (relu, ensemble, after warmup)
    ("none", None, False), ("input", None, True), ("output", 3, True), ("none", 3, False),
]


def brn_case(relu: str, ensemble: int | None, warm_done: bool,
             impl: str = "torch") -> tuple[BatchRenorm1d, torch.Tensor, torch.Tensor]:
    """A BRN layer, a global batch x [.., 2·N, C] (with N = 7 rows per rank) and an upstream gradient."""
    gen = torch.Generator().manual_seed(3)
    c, n = 5, WORLD * 7
    lead = () if ensemble is None else (ensemble,)
    layer = BatchRenorm1d(c, PARAMS, relu=relu, ensemble_size=ensemble, impl=impl)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.copy_(torch.rand(*lead, c, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(*lead, c, generator=gen))
        # Running statistics far from the batch's, so that r and d clip after warmup.
        layer.running_mean.copy_(torch.randn(*lead, c, generator=gen) * 3)
        layer.running_var.copy_(torch.rand(*lead, c, generator=gen) * 5 + 0.1)
        layer.steps.fill_(10 if warm_done else 0)
    x = torch.randn(*lead, n, c, generator=gen) * 2 + 1
    grad = torch.randn(*lead, n, c, generator=gen)
    return layer, x, grad


def run_brn(layer: BatchRenorm1d, x: torch.Tensor, grad: torch.Tensor, compiled: bool = False) -> dict:
    x = x.clone().requires_grad_(True)
    forward = torch.compile(layer, fullgraph=True) if compiled else layer
    y = forward(x, training=True)
    (y * grad).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad,
            **{k: v.clone() for k, v in layer.named_buffers()}}


def synced_brn_rank(ranks: Ranks, compiled: bool, impl: str = "torch") -> list[dict]:
    out = []
    for case in CASES:
        layer, x, grad = brn_case(*case, impl)
        layer.process_group = ranks.group
        rows = x.shape[-2] // WORLD
        mine = slice(ranks.rank * rows, (ranks.rank + 1) * rows)
        out.append(run_brn(layer, x[..., mine, :], grad[..., mine, :], compiled))
    return out


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_synced_brn_equals_one_process_on_the_concatenated_batch(tmp_path, compiled):
    per_rank = spawn(synced_brn_rank, tmp_path, compiled)
    for i, case in enumerate(CASES):
        layer, x, grad = brn_case(*case)
        want = run_brn(layer, x, grad)
        rows = x.shape[-2] // WORLD
        for r in range(WORLD):
            got, mine = per_rank[r][i], slice(r * rows, (r + 1) * rows)
            torch.testing.assert_close(got["y"], want["y"][..., mine, :], msg=f"{case} y rank {r}")
            torch.testing.assert_close(got["x_grad"], want["x_grad"][..., mine, :], msg=f"{case} dx rank {r}")
            for name in ("running_mean", "running_var", "steps"):
                torch.testing.assert_close(got[name], want[name], msg=f"{case} {name} rank {r}")
        # Each rank holds the parameter gradient of its rows; their sum is the whole batch's.
        for name in ("weight_grad", "bias_grad"):
            torch.testing.assert_close(sum(p[i][name] for p in per_rank), want[name], rtol=1e-5, atol=1e-5,
                                       msg=f"{case} {name}")


def synced_impls_rank(ranks: Ranks, impls: tuple[str, ...]) -> dict[str, list[dict]]:
    return {impl: synced_brn_rank(ranks, False, impl) for impl in impls}


@pytest.mark.parametrize("impl", ["torch_fast", pytest.param("triton", marks=pytest.mark.skipif(
    not INTERPRET, reason="the Triton kernels on CPU tensors need TRITON_INTERPRET=1"))])
def test_synced_fused_paths_equal_the_synced_reference(tmp_path, impl):
    """The hand-written backward and the Triton kernels (under the interpreter) in a 2-rank gloo
    group: outputs, input and parameter gradients and running statistics of every rank as
    those of the composed reference's all-reduce path."""
    per_rank = spawn(synced_impls_rank, tmp_path, ("torch", impl))
    for r, results in enumerate(per_rank):
        for case, got, want in zip(CASES, results[impl], results["torch"]):
            for name, value in want.items():
                torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=f"{case} {name} rank {r}")


# --- the update (B rows per rank) ----------------------------------------------------------


def make_update(discrete: bool, ranks: Ranks, batch_size: int, compiled: bool = False) -> Update:
    torch.manual_seed(0)  # the same initial weights in every process
    return small_update("agent.net.batch_renorm=true", f"agent.memory.batch_size={batch_size}",
                        "agent.algorithm.policy_delay=1", f"run.compile={str(compiled).lower()}",
                        discrete=discrete, ranks=ranks)


def global_batches(discrete: bool, steps: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    n = WORLD * B
    return [Batch(torch.randn(n, OBS, generator=gen),
                  torch.randint(N_ACTIONS, (n,), generator=gen) if discrete
                  else torch.rand(n, ACT, generator=gen) * 2 - 1,
                  torch.randn(n, generator=gen), torch.randn(n, OBS, generator=gen),
                  (torch.rand(n, generator=gen) < 0.2).float(), None, torch.arange(n))
            for _ in range(steps)]


def train(update: Update, batches: list[Batch]) -> dict[str, torch.Tensor]:
    update.buffer = FixedBatches(batches)
    for _ in batches:
        update.step()
    # Adam's moments too: Adam's step barely depends on the gradient's scale; its moments do.
    moments = {f"{name}.{i}.{key}": state[key] for name, opt in
               (("critic", update.critic_opt), ("actor", update.actor_opt), ("alpha", update.alpha_opt))
               for i, state in enumerate(opt.state.values()) for key in ("exp_avg", "exp_avg_sq")}
    return {k: v.detach().clone() for k, v in {**update.agent.state_dict(), **moments}.items()}


def update_rank(ranks: Ranks, discrete: bool, steps: int, compiled: bool = False) -> dict[str, torch.Tensor]:
    update = make_update(discrete, ranks, B, compiled)
    torch.manual_seed(100 + ranks.rank)  # each rank draws its own policy noise, as in the learner
    rows = slice(ranks.rank * B, (ranks.rank + 1) * B)
    mine = [Batch(*(None if t is None else t[rows] for t in batch)) for batch in global_batches(discrete, steps)]
    return train(update, mine)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_discrete_update_equals_one_process_on_the_concatenated_batch(tmp_path, compiled):
    """Discrete CrossQ draws no noise, so 2 ranks × B must equal 1 eager process × 2B."""
    per_rank = spawn(update_rank, tmp_path, True, 4, compiled)
    want = train(make_update(True, Ranks(), WORLD * B), global_batches(True, 4))
    moved = {k for k, v in want.items() if v.is_floating_point() and not torch.equal(v, per_rank[0][k])}
    assert moved, "the comparison must cover parameters that moved"
    for r in range(WORLD):
        for name, value in want.items():
            torch.testing.assert_close(per_rank[r][name], value, rtol=1e-4, atol=1e-5, msg=f"{name} rank {r}")


def test_continuous_ranks_keep_identical_parameters(tmp_path):
    """Different policy noise on each rank, one set of weights: gradients and BRN stats are shared."""
    per_rank = spawn(update_rank, tmp_path, False, 4)
    start = train(make_update(False, Ranks(), B), [])
    assert any(not torch.equal(per_rank[0][k], v) for k, v in start.items() if v.is_floating_point())
    for name, value in per_rank[0].items():
        assert torch.equal(per_rank[1][name], value), name


# --- the learner under torchrun ----------------------------------------------------------


def torchrun(*args: str, cwd: Path, nproc: int = WORLD, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", "-m", "crossq_gpu.learner", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_ranks_write_one_run_and_resume_exactly(tmp_path):
    """Rank 0 alone writes; N steps + resume to 2N with the same K == one 2N run."""
    common = [*SMALL, "--save-buffer", "--checkpoint-every", "100000"]
    full = torchrun(*common, "--total-steps", "800", "--out", "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    assert full.stdout.count("done: 800 env steps") == 1
    assert torchrun(*common, "--total-steps", "400", "--out", "part", cwd=tmp_path).returncode == 0
    with (tmp_path / "part" / "metrics.jsonl").open("a") as f:  # as if killed after the checkpoint
        f.write('{"kind": "train", "env_steps": 500}\n{"kind": "train", "env_steps": 600}\n{"kind": "tr')
    resumed = torchrun("--resume", "part", "--total-steps", "800", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("resuming at env step 400: dropped 2 metric rows written after the checkpoint "
                                "and 1 torn line\n") == 1  # rank 0 cut the records

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["world_size"] == 2 and len(a["ranks"]) == 2
    assert not torch.equal(a["ranks"][0]["obs"], a["ranks"][1]["obs"])  # each rank its own envs
    for name, value in a["agent"].items():
        assert torch.equal(value, b["agent"][name]), name
    train = [r for r in rows(tmp_path / "full") if r["kind"] == "train"]
    assert [r["env_steps"] for r in train] == list(range(100, 900, 100))  # all ranks' envs counted
    assert [comparable(r) for r in rows(tmp_path / "full")] == [comparable(r) for r in rows(tmp_path / "part")]
    assert len(list((tmp_path / "full").glob("events.out.tfevents.*"))) == 1


def test_resume_with_another_process_count_is_refused(tmp_path, capsys):
    assert torchrun(*SMALL, "--total-steps", "200", "--out", "run", cwd=tmp_path).returncode == 0
    assert learner.main(["--resume", str(tmp_path / "run")]) == learner.EXIT_USAGE
    assert "written by 2 process(es) and this run has 1" in capsys.readouterr().err


def test_bad_input_under_torchrun_is_one_line(tmp_path):
    result = torchrun(*SMALL, "--env", "gym:NoSuchEnv-v0", "--out", "run", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("error: unknown environment") == 1, result.stderr[-2000:]


def test_a_signal_to_one_rank_stops_all_with_a_checkpoint(tmp_path):
    """SIGTERM reaches rank 1 only: the ranks agree, stop after the same step, rank 0 saves."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
                             "-m", "crossq_gpu.learner", *SMALL, "--total-steps", "10000000", "--out", "run"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "stopped at env step" in err, err[-2000:]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["counters"]["env_steps"] > 0 and len(ckpt["ranks"]) == WORLD


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (Linux /proc)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


@pytest.mark.learning
@pytest.mark.timeout(600)
@pytest.mark.slow
def test_two_ranks_learn_pendulum(tmp_path):
    """2 ranks × 1 env, one update per vector step each: an update per 2 env steps on a 2×256 batch.

    (About 2 min on 2 cores, where every update waits on seven ~1.5 ms gloo collectives.)
    """
    result = torchrun("--preset", "cpu", "--device", "cpu", "--seed", "0", "--out", "run", "--eval-every", "1000",
                      "--eval-episodes", "5", "--no-compile", "--env", "gym:Pendulum-v1", "--total-steps", "8000",
                      "--set", "agent.algorithm.training_start_step=1000", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    evals = [r["return_mean"] for r in rows(tmp_path / "run") if r["kind"] == "eval"]
    assert max(evals) >= -250, evals


@pytest.mark.parametrize("visible, local_rank, want", [(None, 1, "1"), ("4,5,6", 1, "5"), ("4", 1, None)])
def test_each_rank_sees_only_its_own_gpu(monkeypatch, visible, local_rank, want):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if want is None:
        with pytest.raises(RankSetupError, match="one process per GPU"):
            pin_local_gpu()
    else:
        pin_local_gpu()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == want
