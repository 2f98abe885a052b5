"""Replay vs PrioritizedReplay throughput: `python -m benchmarks.buffer_throughput`.

For each capacity the buffer is filled to the brim by `add` (timed: transitions/s), then
`sample` and, as the learner does it, `sample` + `update_priorities` are timed per batch
size (transitions/s). Both buffers run in the same process so the PER/uniform ratios are
comparable even on a shared machine. Writes benchmarks/results/buffer_throughput_<device>.json
(+ .png) and prints a table; times are medians (`benchmarks.common.bench_ms`).
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch

from benchmarks.common import bench_ms, pick_device, print_table, save_png, write_json
from crossq_gpu.buffer import BUFFERS, PrioritizedReplay, ReplayBuffer

COLUMNS = ["capacity", "batch", "add/s", "sample/s", "PER add/s", "PER sample/s", "PER +update/s",
           "x_add", "x_sample", "x_update"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--capacities", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    p.add_argument("--max-capacity", type=float, default=float("inf"), help="skip capacities above this")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--obs-dim", type=int, default=27, help="27: Brax ant")
    p.add_argument("--act-dim", type=int, default=8)
    p.add_argument("--num-envs", type=int, default=4096, help="transitions per add()")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch's default if unset); 1 avoids OpenMP barrier stalls on a busy shared CPU")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timed measurement")
    return p.parse_args()


def per_call_seconds(fn: Callable[[], object], device: torch.device, min_run_time: float) -> float:
    """Median seconds per call over about min_run_time seconds."""
    return bench_ms(fn, device, rep_ms=1e3 * min_run_time) / 1e3


def bench_capacity(name: str, capacity: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows of one buffer at one capacity; its storage is freed before the next one is built."""
    rows = measure(BUFFERS[name](args.obs_dim, (args.act_dim,), capacity, args.num_envs, device), name, args, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def measure(buf: ReplayBuffer, name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    capacity, n = buf.max_size, args.num_envs
    step = (torch.randn(n, args.obs_dim, device=device), torch.rand(n, args.act_dim, device=device) * 2 - 1,
            torch.randn(n, device=device), torch.randn(n, args.obs_dim, device=device), torch.zeros(n, device=device))
    for _ in range(-(-capacity // n)):  # fill to the brim: sampling cost depends on the stored range
        buf.add(*step)
    add_s = per_call_seconds(lambda: buf.add(*step), device, args.min_run_time)
    rows = []
    for batch_size in args.batch_sizes:
        sample_s = per_call_seconds(lambda b=batch_size: buf.sample(b), device, args.min_run_time)
        if isinstance(buf, PrioritizedReplay):
            td = torch.rand(batch_size, device=device)

            def learner_step(b: int = batch_size, td: torch.Tensor = td) -> None:
                buf.update_priorities(buf.sample(b).indices, td)

            step_s = per_call_seconds(learner_step, device, args.min_run_time)
        else:
            step_s = sample_s  # uniform sampling has no priority update
        rows.append({"buffer": name, "capacity": capacity, "batch_size": batch_size,
                     "add_per_s": n / add_s, "sample_per_s": batch_size / sample_s,
                     "sample_update_per_s": batch_size / step_s})
    return rows


def ratio_rows(rows: list[dict]) -> list[dict]:
    """One row per (capacity, batch): both buffers in transitions/s and the PER / uniform ratios."""
    by_key = {(r["buffer"], r["capacity"], r["batch_size"]): r for r in rows}
    per_name = next(name for name, cls in BUFFERS.items() if cls is PrioritizedReplay)
    out = []
    for (name, capacity, batch_size), uni in by_key.items():
        if BUFFERS[name] is not ReplayBuffer:
            continue
        per = by_key[(per_name, capacity, batch_size)]
        out.append({"capacity": capacity, "batch": batch_size, "add/s": uni["add_per_s"],
                    "sample/s": uni["sample_per_s"], "PER add/s": per["add_per_s"],
                    "PER sample/s": per["sample_per_s"], "PER +update/s": per["sample_update_per_s"],
                    "x_add": per["add_per_s"] / uni["add_per_s"], "x_sample": per["sample_per_s"] / uni["sample_per_s"],
                    "x_update": per["sample_update_per_s"] / uni["sample_per_s"]})
    return out


def plot(rows: list[dict], title: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in zip(BUFFERS, ("-", "--")):
        for color, batch_size in enumerate(sorted({r["batch_size"] for r in rows})):
            sel = [r for r in rows if r["buffer"] == name and r["batch_size"] == batch_size]
            key = "sample_update_per_s" if issubclass(BUFFERS[name], PrioritizedReplay) else "sample_per_s"
            axes[0].plot([r["capacity"] for r in sel], [r[key] for r in sel], style, marker="o", color=f"C{color}",
                         label=f"{name} B={batch_size}")
        sel = [r for r in rows if r["buffer"] == name and r["batch_size"] == rows[0]["batch_size"]]
        axes[1].plot([r["capacity"] for r in sel], [r["add_per_s"] for r in sel], style, marker="o", label=name)
    axes[0].set_title("sample (PER: + update_priorities)")
    axes[1].set_title("add")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="capacity (transitions)", ylabel="transitions / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    capacities = [int(c) for c in args.capacities if c <= args.max_capacity]
    rows = [row for capacity in capacities for name in BUFFERS for row in bench_capacity(name, capacity, args, device)]
    print_table(ratio_rows(rows), COLUMNS)
    print("transitions/s; x_*: PrioritizedReplay / Replay (x_update: PER sample + update_priorities vs uniform sample)")
    config = {k: v for k, v in vars(args).items() if k != "max_capacity"} | {"capacities": capacities}
    path = write_json("buffer_throughput", device, rows, config=config)
    title = f"buffer throughput — {device.type}, torch {torch.__version__}"
    png = save_png(plot(rows, title), "buffer_throughput", device)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
