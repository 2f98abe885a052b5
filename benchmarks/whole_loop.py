"""Does the whole loop keep up with its parts? `python -m benchmarks.whole_loop`.

At one env count (default ant at 1,024 envs, the auto regime's batch and updates per
vector step), seconds per vector step of:
- env: `env.step` alone, random actions;
- updates: the vector step's `training_iter` gradient steps alone, on a filled buffer;
- loop: the learner's own loop (`Run.train`, the rule's logging included, no evaluation and
  no checkpoint), with `run.overlap` off and on, alternating rounds in one process, each
  after a warm-up that holds the compiles.
On a CPU torch gets one thread, so that XLA's step and the updates can share the two cores.
The loop should cost no more than env + updates; with overlap, less. Writes
benchmarks/results/whole_loop_<device>.json and .png, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from benchmarks.common import pick_device, print_table, save_png, write_json
from crossq_gpu import configure
from crossq_gpu.training import Run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="ant")
    p.add_argument("--num-envs", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--vector-steps", type=int, default=25,
                   help="timed vector steps per measurement (default: one log interval of the rule)")
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def build(args: argparse.Namespace, device: torch.device, out: Path) -> Run:
    cfg, _ = configure.build_config("auto", device.type == "cuda", flags={
        "env.name": args.env, "env.num_envs": args.num_envs, "run.device": device.type,
        "run.eval_every": 0, "run.checkpoint_every": 0})
    run = Run(cfg, out, device)
    run.checkpoint = lambda: None  # train() ends with one; here it would be timed as loop
    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_s(run: Run, vector_steps: int, device: torch.device) -> float:
    """Seconds per vector step of Run.train past the random phase and one warm-up step."""
    n, start = run.cfg.env.num_envs, run.cfg.agent.algorithm.training_start_step
    warm = -(-start // n) + 2  # random steps, then compiles
    run.cfg.run.total_steps = (run.counters.vector_steps + (warm if run.counters.vector_steps == 0 else 0)) * n
    run.train()
    sync(device)
    t0, steps0 = time.perf_counter(), run.counters.vector_steps
    run.cfg.run.total_steps = (steps0 + vector_steps) * n
    run.train()
    sync(device)
    return (time.perf_counter() - t0) / (run.counters.vector_steps - steps0)


def parts_s(run: Run, vector_steps: int, device: torch.device) -> tuple[float, float]:
    """(env step, one vector step's updates), each alone, in seconds."""
    action = torch.rand(run.cfg.env.num_envs, run.env.act_dim, device=device) * 2 - 1
    run.env.step(action)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(vector_steps):
        run.env.step(action)
    sync(device)
    env_s = (time.perf_counter() - t0) / vector_steps
    iters = run.cfg.agent.algorithm.training_iter
    run.update.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(vector_steps * iters):
        run.update.step()
    sync(device)
    return env_s, (time.perf_counter() - t0) / vector_steps


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    if device.type == "cpu":  # one torch thread: on 2 cores XLA's step and the updates overlap, not spin
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        # One run (one env, one compiled update) for every part: the loop reads run.overlap
        # each time it starts, so the rounds switch it between loop measurements.
        run = build(args, device, Path(tmp))
        regime = configure.describe_regime(run.cfg)
        samples: dict[str, list[float]] = {"env": [], "updates": [], "loop": [], "loop_overlap": []}
        for _ in range(args.rounds):
            for overlap in (False, True):
                run.cfg.run.overlap = overlap
                samples["loop_overlap" if overlap else "loop"].append(loop_s(run, args.vector_steps, device))
            env_s, updates_s = parts_s(run, args.vector_steps, device)
            samples["env"].append(env_s)
            samples["updates"].append(updates_s)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [{"part": k, "s_per_vector_step": med[k], "env_steps_per_s": args.num_envs / med[k],
             "x_env_plus_updates": med[k] / (med["env"] + med["updates"]), "samples": samples[k]}
            for k in samples]
    print(regime)
    print_table(rows, ["part", "s_per_vector_step", "env_steps_per_s", "x_env_plus_updates"])
    write_json("whole_loop", device, rows, env=args.env, num_envs=args.num_envs, regime=regime,
               vector_steps=args.vector_steps, rounds=args.rounds)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.bar([r["part"] for r in rows], [r["s_per_vector_step"] for r in rows], color=["C0", "C1", "C2", "C3"])
    ax.axhline(med["env"] + med["updates"], color="k", ls="--", lw=1, label="env + updates")
    ax.set_ylabel("seconds per vector step")
    ax.set_title(f"{args.env}, {args.num_envs} envs ({device.type})")
    ax.legend()
    save_png(fig, "whole_loop", device)
    print(json.dumps({k: round(v, 4) for k, v in med.items()}))


if __name__ == "__main__":
    main()
