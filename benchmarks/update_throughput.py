"""Gradient updates per second: CrossQ vs our SAC, eager vs compiled vs fused vs CUDA-graph captured.

    python -m benchmarks.update_throughput                        # default sweep for the device
    python -m benchmarks.update_throughput --widths 256 --batch-sizes 256 --rounds 5
    python -m benchmarks.update_throughput --device cuda --widths 256 2048 --batch-sizes 256 32768
    python -m benchmarks.update_throughput --device cuda --widths 1024 --batch-sizes 16384 --modes graphed \
        --algos CrossQ --compare                  # one point, one compile: what gpu_check.sh runs

A MuJoCo-sized task (obs 17, act 6), actor 256×2, policy_delay 3 and a replay buffer of
100,000 random transitions; the critic width (hidden × 2) and batch size are swept. One
`Update.step()` is one gradient step (sample, critic step and, every third step, the actor
and α steps), so updates/s counts what the learner runs; transitions/s = updates/s × batch.

Modes (`MODES`): `eager`; `compiled` (torch.compile of the losses, fullgraph; eager backward
and Adam); `fused` (the whole step as one compiled program: the learner's CPU default) and,
on CUDA, `graphed` (fused and captured as a CUDA graph — the learner's CUDA default). Matmuls
run at the learner's precision (TF32 on CUDA). At the batch sizes of `--compare-batch`, sb3-contrib's
CrossQ (PyTorch) and SBX's CrossQ (JAX) run the same config when installed
(`pip install -e '.[compare]'`): their `train(gradient_steps=K)` on a pre-filled buffer.
Both put BatchRenorm in the actor as well; `--variants actor-brn` adds `CrossQ+aBRN` (ours
with `net.batch_renorm: true`) at every point for a like-for-like ratio, and `--variants
bf16` adds `CrossQ+bf16` (`run.autocast: bf16`: bf16 matmuls, float32 BRN; not
like-for-like), which shows what a CPU with bf16 instructions (AVX512-BF16, AMX) gains.
Each variant in each mode compiles (and captures) its own update, so the point's cost grows
with algos × variants × modes.

Every variant of one (width, batch) point lives in one process and runs in interleaved
blocks (A, B, C, A, B, C, …); the median over rounds is reported, so the ratios hold on a
shared machine even when the absolute numbers move. JAX uses its own thread pool (all
cores); `--threads` sets torch's. Writes benchmarks/results/update_throughput_<device>.json
and .png and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import calibrate, pick_device, print_table, rate, save_png, write_json
from crossq_gpu.configure import build_config
from crossq_gpu.distributed import Ranks
from crossq_gpu.synthetic import random_update
from crossq_gpu.update import set_matmul_precision

OBS, ACT = 17, 6  # HalfCheetah-v5 / Walker2d-v5 in Gymnasium
ACTOR = [256, 256]
POLICY_DELAY = 3
BUFFER = 100_000
COLUMNS = ["width", "batch", "impl", "mode", "ups", "transitions_per_s", "x_sb3", "x_sbx"]
Run = Callable[[int], None]  # run(k): k gradient steps, finished (synchronised) on return
# --variants: extra CrossQ rows beside the plain ones, as (impl name, ours() keyword arguments).
# --modes: how our update runs (the learner's default: fused on a CPU, graphed on CUDA).
MODES = {"eager": "no compile", "compiled": "compiled losses, eager backward and Adam",
         "fused": "the whole step as one compiled program", "graphed": "fused, captured as a CUDA graph"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "actor-brn": ("CrossQ+aBRN", {"actor_brn": True}), "bf16": ("CrossQ+bf16", {"autocast": "bf16"})}


def ours(algo: str, mode: str, width: int, batch: int, device: torch.device, actor_brn: bool = False,
         ranks: Ranks = Ranks(), autocast: str = "none") -> Run:
    """Our update on a pre-filled buffer; with `ranks`, one data-parallel rank of it."""
    cfg, _ = build_config("paper", device.type == "cuda", overrides=[
        f"agent.algorithm.name={algo}", f"agent.critic_net.hidden=[{width}, {width}]", f"agent.net.hidden={ACTOR}",
        f"agent.net.batch_renorm={str(actor_brn).lower()}", f"agent.memory.batch_size={batch}",
        f"agent.algorithm.policy_delay={POLICY_DELAY}", f"run.compile={str(mode != 'eager').lower()}",
        f"run.fused_step={str(mode in ('fused', 'graphed')).lower()}",
        f"run.cuda_graphs={str(mode == 'graphed').lower()}", f"run.autocast={autocast}"])
    update = random_update(cfg, OBS, ACT, device=device, ranks=ranks, size=BUFFER, per_add=1000, done_prob=0.01)

    def run(k: int) -> None:
        for _ in range(k):
            update.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


class _BoxEnv(gym.Env):
    """Spaces only: the baselines train from a pre-filled buffer and never step an env."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(OBS, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(OBS, np.float32), 0.0, False, False, {}


def baseline(name: str, width: int, batch: int, device: torch.device) -> Run:
    """sb3-contrib's or SBX's CrossQ at the same widths, batch and policy delay."""
    from stable_baselines3.common.logger import Logger

    if name == "sb3-contrib":
        from sb3_contrib import CrossQ

        extra: dict[str, Any] = {"device": device.type}
    else:
        from sbx import CrossQ

        extra = {}
    model = CrossQ("MlpPolicy", _BoxEnv(), buffer_size=BUFFER, batch_size=batch, policy_delay=POLICY_DELAY,
                   policy_kwargs={"net_arch": {"pi": ACTOR, "qf": [width, width]}}, seed=0, **extra)
    model.set_logger(Logger(folder=None, output_formats=[]))
    rb, rng = model.replay_buffer, np.random.default_rng(0)
    for field in (rb.observations, rb.next_observations, rb.rewards):
        field[:] = rng.standard_normal(field.shape)
    rb.actions[:] = rng.uniform(-1.0, 1.0, rb.actions.shape)
    rb.full = True
    # SBX jit-compiles train() per gradient_steps and reads its losses back; sb3 calls .item() every step.
    return lambda k: model.train(gradient_steps=k, batch_size=batch)


def installed(name: str) -> bool:
    module = {"sb3-contrib": "sb3_contrib", "sbx": "sbx"}[name]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def measure(runs: dict[str, Run], rounds: int, block_s: float) -> dict[str, list[float]]:
    """Updates/s of each variant per round, blocks interleaved; k per variant set so a block takes ~block_s."""
    steps = {}
    for name, run in runs.items():
        steps[name] = calibrate(run, POLICY_DELAY, block_s)
        run(steps[name])  # SBX compiles once per distinct gradient_steps
    ups: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            ups[name].append(rate(run, steps[name]))
    return ups


def point_runs(width: int, batch: int, args: argparse.Namespace, device: torch.device) -> dict[tuple[str, str], Run]:
    """Every (impl, mode) timed at one point: each builds (and, unless eager, compiles) its own update."""
    runs: dict[tuple[str, str], Run] = {}
    for algo in args.algos:
        for mode in args.modes:
            runs[(algo, mode)] = ours(algo, mode, width, batch, device)
    for variant in args.variants:
        impl, kwargs = VARIANTS[variant]
        for mode in args.modes:
            runs[(impl, mode)] = ours("CrossQ", mode, width, batch, device, **kwargs)
    if batch in args.compare_batch:
        for name in args.compare:
            runs[(name, "jit" if name == "sbx" else "eager")] = baseline(name, width, batch, device)
    return runs


def sweep_point(width: int, batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch._dynamo.reset()  # each Update compiles its own losses: stay clear of the recompile limit
    runs = point_runs(width, batch, args, device)
    samples = measure({f"{impl}/{mode}": run for (impl, mode), run in runs.items()}, args.rounds, args.block_s)
    rows = []
    for (impl, mode), ups in zip(runs, samples.values()):
        median = statistics.median(ups)
        rows.append({"width": width, "batch": batch, "impl": impl, "mode": mode, "ups": median,
                     "transitions_per_s": median * batch, "ups_rounds": ups})
    for name, column in (("sb3-contrib", "x_sb3"), ("sbx", "x_sbx")):
        ref = next((r["ups"] for r in rows if r["impl"] == name), None)
        for r in rows:
            r[column] = r["ups"] / ref if ref and r["impl"] not in ("sb3-contrib", "sbx") else None
    del runs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict], title: str) -> plt.Figure:
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(widths), figsize=(4.5 * len(widths), 3.8), squeeze=False, sharey=True)
    for ax, width in zip(axes[0], widths):
        sel = [r for r in rows if r["width"] == width]
        for key in dict.fromkeys((r["impl"], r["mode"]) for r in sel):
            pts = sorted((r["batch"], r["ups"]) for r in sel if (r["impl"], r["mode"]) == key)
            ax.plot(*zip(*pts), marker="o" if len(pts) > 1 else "s", linestyle="-" if len(pts) > 1 else "",
                    label="/".join(key))
        ax.set(xscale="log", yscale="log", xlabel="batch size", title=f"critic {width}×2")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("gradient updates / s")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9, y=1.02)
    return fig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--widths", type=int, nargs="+",
                   help="critic hidden widths (default: CPU 256 2048; CUDA 256 … 2048)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: CPU 256 1024; CUDA 256 … 32768")
    p.add_argument("--max-cost", type=int, default=None,
                   help="skip points with batch × width above this "
                        "(CPU default 256 × 2048: the paper width at batch 256)")
    p.add_argument("--modes", nargs="+", choices=list(MODES),
                   help="default: all the device supports")
    p.add_argument("--algos", nargs="+", choices=["CrossQ", "SAC"], default=["CrossQ", "SAC"],
                   help="our algorithms to time (default: both)")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=[],
                   help="extra CrossQ rows at every point: actor-brn (BRN in the actor too), bf16 (autocast)")
    p.add_argument("--compare", nargs="*", default=None, choices=["sb3-contrib", "sbx"],
                   help="baselines to run beside ours (default: those installed; --compare alone: none)")
    p.add_argument("--compare-batch", type=int, nargs="+", default=[256], help="batch sizes at which the baselines run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--results", default="update_throughput",
                   help="name of the JSON/PNG under benchmarks/results/ (a partial sweep keeps the full one)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved blocks per variant (median reported)")
    p.add_argument("--block-s", type=float, default=0.4, help="target seconds per timed block")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.widths = args.widths or ([256, 512, 1024, 2048] if cuda else [256, 2048])
    args.batch_sizes = args.batch_sizes or ([256, 1024, 4096, 16384, 32768] if cuda else [256, 1024])
    args.max_cost = args.max_cost or (None if cuda else 256 * 2048)
    args.modes = args.modes or [mode for mode in MODES if cuda or mode != "graphed"]
    if "graphed" in args.modes and not cuda:
        p.error("--modes graphed needs CUDA")
    points = [(w, b) for w in args.widths for b in args.batch_sizes
              if args.max_cost is None or b * w <= args.max_cost]
    if not points:
        p.error(f"every point has batch × width above --max-cost {args.max_cost}; raise it")
    torch.set_num_threads(args.threads)
    set_matmul_precision(device)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # SBX beside torch on one GPU
    if args.compare is None:
        args.compare = [name for name in ("sb3-contrib", "sbx") if installed(name)]

    modules = (("sb3-contrib", "sb3_contrib"), ("sbx", "sbx"))
    versions = {name: __import__(module).__version__ for name, module in modules if name in args.compare}
    if "sbx" in args.compare:
        import jax

        versions["jax"] = jax.__version__
    meta = {"obs_dim": OBS, "act_dim": ACT, "actor": ACTOR, "policy_delay": POLICY_DELAY, "buffer": BUFFER,
            "threads": args.threads, "rounds": args.rounds, "block_s": args.block_s, "modes": args.modes,
            "matmul_precision": torch.get_float32_matmul_precision(), "compare": versions}
    rows = []
    for width, batch in points:
        rows += sweep_point(width, batch, args, device)
        print_table([r for r in rows if (r["width"], r["batch"]) == (width, batch)], COLUMNS)
        write_json(args.results, device, rows, complete=False, **meta)  # a time limit keeps what ran
    print("\nupdates/s (median of interleaved rounds); x_sb3, x_sbx: ours / the baseline at the same point")
    print_table(rows, COLUMNS)
    path = write_json(args.results, device, rows, complete=True, **meta)
    fig = plot(rows, f"update throughput — {device.type}, torch {torch.__version__}, {args.threads} threads")
    print(f"wrote {path} and {save_png(fig, args.results, device)}")


if __name__ == "__main__":
    main()
