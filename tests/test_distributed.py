"""Data parallelism on CPU with gloo and 2 processes: synchronized BRN and the distributed update.

Each test spawns 2 ranks that rendezvous through a file; the ranks save what they computed
and the test compares it with one process that runs the same math on the concatenated
batch — the definition of what the distributed run must compute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossq_gpu.buffer import Batch
from crossq_gpu.config import build_config
from crossq_gpu.distributed import Ranks, sync_batch_renorm
from crossq_gpu.kernels.batch_renorm import BatchRenorm1d
from crossq_gpu.networks import build_agent
from crossq_gpu.update import Update, target_entropy

WORLD = 2
HYPER = dict(momentum=0.1, eps=1e-3, r_max=1.5, d_max=0.5)


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


def brn_case(relu: str, ensemble: int | None, warm_done: bool) -> tuple[BatchRenorm1d, torch.Tensor, torch.Tensor]:
    """A BRN layer, a global batch x [.., 2·N, C] (with N = 7 rows per rank) and an upstream gradient."""
    gen = torch.Generator().manual_seed(3)
    c, n = 5, WORLD * 7
    lead = () if ensemble is None else (ensemble,)
    layer = BatchRenorm1d(c, warmup_steps=4, relu=relu, ensemble_size=ensemble, impl="torch", **HYPER)
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


def synced_brn_rank(ranks: Ranks, compiled: bool) -> list[dict]:
    out = []
    for case in CASES:
        layer, x, grad = brn_case(*case)
        layer.process_group = ranks.group
        rows = x.shape[-2] // WORLD
        mine = slice(ranks.rank * rows, (ranks.rank + 1) * rows)
        out.append(run_brn(layer, x[..., mine, :], grad[..., mine, :], compiled))
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
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


# --- the update --------------------------------------------------------------------------

OBS, ACT, N_ACTIONS, B = 5, 2, 3, 16  # B rows per rank


def make_update(discrete: bool, ranks: Ranks, batch_size: int) -> Update:
    cfg, _ = build_config("cpu", False, overrides=[
        "agent.critic_net.hidden=[32, 32]", "agent.net.hidden=[32, 32]", "agent.net.batch_renorm=true",
        f"agent.memory.batch_size={batch_size}", "agent.critic_net.batch_renorm.warmup_steps=2",
        "agent.algorithm.policy_delay=1", "run.compile=false"])
    torch.manual_seed(0)  # the same initial weights in every process
    agent = build_agent(cfg, OBS, None if discrete else ACT, N_ACTIONS if discrete else None)
    sync_batch_renorm(agent, ranks)
    return Update(agent, None, cfg, target_entropy(cfg, ACT, N_ACTIONS if discrete else None),
                  torch.device("cpu"), ranks)


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
    feed = iter(batches)
    update.buffer = type("FixedBatches", (), {"sample": lambda self, _: next(feed)})()
    for _ in batches:
        update.step()
    # Adam's moments too: Adam's step barely depends on the gradient's scale; its moments do.
    moments = {f"{name}.{i}.{key}": state[key] for name, opt in
               (("critic", update.critic_opt), ("actor", update.actor_opt), ("alpha", update.alpha_opt))
               for i, state in enumerate(opt.state.values()) for key in ("exp_avg", "exp_avg_sq")}
    return {k: v.detach().clone() for k, v in {**update.agent.state_dict(), **moments}.items()}


def update_rank(ranks: Ranks, discrete: bool, steps: int) -> dict[str, torch.Tensor]:
    update = make_update(discrete, ranks, B)
    torch.manual_seed(100 + ranks.rank)  # each rank draws its own policy noise, as in the learner
    rows = slice(ranks.rank * B, (ranks.rank + 1) * B)
    mine = [Batch(*(None if t is None else t[rows] for t in batch)) for batch in global_batches(discrete, steps)]
    return train(update, mine)


def test_discrete_update_equals_one_process_on_the_concatenated_batch(tmp_path):
    """Discrete CrossQ draws no noise, so 2 ranks × B must equal 1 process × 2B exactly."""
    per_rank = spawn(update_rank, tmp_path, True, 4)
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
