"""Env steps/s vs num_envs for Brax envs: `python -m benchmarks.env_throughput`.

Per backend and env count, two numbers side by side in one process:
- env: `env.step` alone (jitted Brax step + auto-reset + DLPack both ways);
- transition: what the learner's collection does per vector step — a small torch MLP policy
  acts, the env steps, and the transition is written to the device ReplayBuffer.
Their ratio is the share of time the torch side adds; mjx/generalized compares backends.
Compile time (first reset + step, with the persistent JAX cache as it stands) is recorded too.
Writes benchmarks/results/env_throughput_<device>.json (+ .png) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from matplotlib.figure import Figure

from benchmarks.common import pick_device, print_table, save_png, write_json
from crossq_gpu.buffer import ReplayBuffer
from crossq_gpu.envs import make_env
from crossq_gpu.envs.brax import jax_module


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--env", default="ant", help="Brax env name")
    p.add_argument("--backends", nargs="+", default=["generalized", "mjx"])
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--max-envs", type=int, default=None, help="skip env counts above this (CPU: 1024)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's); 1 keeps OpenMP spin-waits off XLA's cores")
    p.add_argument("--min-time", type=float, default=1.5, help="seconds per timed measurement")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vector_steps_per_s(step: Callable[[], object], device: torch.device, min_time: float) -> float:
    """Vector steps per second over at least min_time (and 5 steps), after 3 warm-up steps."""
    for _ in range(3):
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - start < min_time:
        step()
        n += 1
    sync(device)
    return n / (time.perf_counter() - start)


def measure(env_name: str, backend: str, num_envs: int, device: torch.device, min_time: float) -> dict:
    start = time.perf_counter()
    env = make_env(env_name, num_envs, device, seed=0, backend=backend)
    obs = env.reset()
    env.step(torch.zeros(num_envs, env.act_dim, device=device))
    sync(device)
    compile_s = time.perf_counter() - start

    action = torch.rand(num_envs, env.act_dim, device=device) * 2 - 1
    env_sps = num_envs * vector_steps_per_s(lambda: env.step(action), device, min_time)

    policy = torch.nn.Sequential(torch.nn.Linear(env.obs_dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                 torch.nn.ReLU(), torch.nn.Linear(256, env.act_dim), torch.nn.Tanh()).to(device)
    buffer = ReplayBuffer(env.obs_dim, (env.act_dim,), max_size=64 * num_envs, num_envs=num_envs, device=device)
    state = {"obs": obs}

    @torch.no_grad()
    def transition() -> None:
        a = policy(state["obs"])
        next_obs, reward, terminated, _, info = env.step(a)
        buffer.add(state["obs"], a, reward, info["final_obs"], terminated)
        state["obs"] = next_obs

    transition_sps = num_envs * vector_steps_per_s(transition, device, min_time)
    env.close()
    return {"env": env_name, "backend": backend, "num_envs": num_envs, "compile_s": round(compile_s, 2),
            "env_sps": env_sps, "transition_sps": transition_sps, "transition_vs_env": transition_sps / env_sps}


def plot(rows: list[dict], title: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for backend in dict.fromkeys(r["backend"] for r in rows):
        rs = [r for r in rows if r["backend"] == backend]
        n = [r["num_envs"] for r in rs]
        line, = ax.plot(n, [r["env_sps"] for r in rs], "o-", label=f"{backend}: env.step")
        ax.plot(n, [r["transition_sps"] for r in rs], "s--", color=line.get_color(),
                label=f"{backend}: policy + step + buffer")
    ax.set(xscale="log", yscale="log", xlabel="num_envs", ylabel="env steps / s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    counts = [n for n in args.num_envs if args.max_envs is None or n <= args.max_envs]
    rows = []
    for backend in args.backends:
        for n in counts:
            rows.append(measure(args.env, backend, n, device, args.min_time))
            print_table(rows[-1:], list(rows[-1]))
    by_key = {(r["backend"], r["num_envs"]): r for r in rows}
    for r in rows:
        base = by_key.get(("generalized", r["num_envs"]))
        r["vs_generalized"] = r["env_sps"] / base["env_sps"] if base else None
    jax = jax_module()
    import brax

    meta = {"env": args.env, "jax": jax.__version__, "brax": brax.__version__,
            "jax_devices": [str(d) for d in jax.devices()], "min_time_s": args.min_time}
    path = write_json("env_throughput", device, rows, **meta)
    save_png(plot(rows, f"Brax {args.env} on {device.type}"), "env_throughput", device)
    print()
    print_table(rows, ["backend", "num_envs", "compile_s", "env_sps", "transition_sps",
                       "transition_vs_env", "vs_generalized"])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
