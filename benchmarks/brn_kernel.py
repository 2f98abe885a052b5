"""Benchmark: fused Triton Batch Renormalization vs the torch reference, eager and compiled.

    python -m benchmarks.brn_kernel                      # full sweep on the default device
    python -m benchmarks.brn_kernel --n 512 2048 8192 --c 256 512 --device cpu --threads 1
    python -m benchmarks.brn_kernel --n 32768 131072 8192 512 --impls triton triton_compiled compiled

One training-mode step as a critic layer runs it — forward (batch statistics, running-stat
update, normalise, fused ReLU) and backward for x, γ and β — timed per implementation:
`triton` (CUDA only; the kernels plus the small [C]-sized torch ops around them, launched
eagerly), `triton_compiled` (the same under torch.compile(fullgraph=True), which fuses
those small ops as the learner's compiled update does), `eager` (the torch reference),
`compiled` (the reference under torch.compile(fullgraph=True): Inductor's own fused
BN + ReLU, the bar; `x_inductor` is its time over each row's) and `torch_fast` (the
hand-written-backward torch path that CPUs run by default). GB/s divides the Triton
kernels' own traffic, 8·E·N·C·4 bytes (forward reads x twice and writes y; backward reads x and dy twice and
writes dx), by each implementation's time, so all rows share one scale and, on a GPU with a
known peak, `pct_peak` says how close the kernel gets to DRAM bandwidth.

On CUDA each forward + backward is captured once as a CUDA graph and its replays are timed:
at the target sizes the GPU work takes tens of µs, less than the 15–20 Python launches and
the autograd engine of an eager step, so timing eager calls would measure the launches
rather than the kernels (and the learner replays graphs anyway). On a CPU the step is timed
as called.
"""

import argparse
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from benchmarks.common import bench_ms, environment, pick_device, print_table, save_png, write_json
from crossq_gpu.capture import GraphedCall
from crossq_gpu.kernels import BrnParams, batch_renorm

# name: (batch_renorm impl, under torch.compile)
IMPLS = {"triton": ("triton", False), "triton_compiled": ("triton", True), "eager": ("torch", False),
         "compiled": ("torch", True), "torch_fast": ("torch_fast", False)}
COLUMNS = ["c", "n", "impl", "ms", "gbps", "pct_peak", "x_eager", "x_inductor"]
PAST_WARMUP = BrnParams(warmup_steps=0)  # r and d active from the first call


def make_step(impl: str, n: int, c: int, e: int, relu: str, device: torch.device) -> Callable[[], None]:
    """A closure running one forward + backward of a BRN layer past warmup (r, d active): on CUDA,
    the replay of its CUDA graph."""
    shape = (n, c) if e == 1 else (e, n, c)
    per_channel = shape[:-2] + (c,)
    x = torch.randn(shape, device=device).requires_grad_()
    g = torch.randn(shape, device=device)
    weight = torch.ones(per_channel, device=device, requires_grad=True)
    bias = torch.zeros(per_channel, device=device, requires_grad=True)
    stats = (torch.zeros(per_channel, device=device), torch.ones(per_channel, device=device),
             torch.zeros((), dtype=torch.long, device=device))

    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return batch_renorm(x, weight, bias, *stats, PAST_WARMUP, training=True, relu=relu,  # type: ignore[arg-type]
                            impl=IMPLS[impl][0])

    if IMPLS[impl][1]:
        torch._dynamo.reset()  # one compile per shape, without hitting the recompile limit
        forward = torch.compile(forward, fullgraph=True, dynamic=False)

    def step() -> None:
        y = forward(x, weight, bias)
        torch.autograd.grad(y, (x, weight, bias), g)

    if device.type != "cuda":
        return step
    # Warm-up (compiles, JITs) and capture; each replay then launches the whole step at once.
    return GraphedCall(step, state=[])


def plot(rows: list[dict], peak: float | None, title: str) -> plt.Figure:
    cs = sorted({r["c"] for r in rows})
    fig, axes = plt.subplots(1, len(cs), figsize=(4 * len(cs), 3.5), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cs):
        for impl in IMPLS:
            pts = sorted((r["n"], r["gbps"]) for r in rows if r["c"] == c and r["impl"] == impl and r["gbps"])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        if peak:
            ax.axhline(peak, color="grey", linestyle="--", label="peak")
        ax.set_xscale("log", base=2)
        ax.set_title(f"C = {c}")
        ax.set_xlabel("batch rows N")
    axes[0][0].set_ylabel("GB/s (Triton traffic / time)")
    axes[0][-1].legend()
    fig.suptitle(title, y=1.03)
    return fig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[512, 8192, 32768, 131072], help="batch rows")
    p.add_argument("--c", type=int, nargs="+", default=[256, 512, 1024, 2048], help="channels")
    p.add_argument("--ensemble", type=int, default=1, help="E > 1 benchmarks an [E, N, C] ensemble")
    p.add_argument("--relu", choices=["none", "input", "output"], default="input",
                   help="fused ReLU side (default: the paper's Linear → ReLU → BRN)")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (1 gives stable numbers on a shared machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    impls = [i for i in args.impls if IMPLS[i][0] != "triton" or device.type == "cuda"]
    if len(impls) < len(args.impls):
        print("Triton needs CUDA: timing the torch paths only.")
    env = environment(device)
    peak = env["peak_gbps"]
    print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  peak {peak} GB/s")

    meta = {"sweep": {"n": args.n, "c": args.c, "e": args.ensemble, "relu": args.relu, "impls": impls},
            "timed": "CUDA-graph replays of forward+backward" if device.type == "cuda" else "eager calls",
            "traffic_bytes": "8*E*N*C*4 (Triton fwd: 2 reads + 1 write; bwd: 4 reads + 1 write)"}
    rows = []
    for n in args.n:  # sizes in the order given, so a time limit can put the ones that matter first
        for c in args.c:
            times: dict[str, float | None] = {}
            for impl in impls:
                try:
                    times[impl] = bench_ms(make_step(impl, n, c, args.ensemble, args.relu, device), device)
                except Exception as err:  # one failing implementation (OOM, compile) must not lose the sweep
                    print(f"{impl} N={n} C={c} failed: {type(err).__name__}: {str(err)[:200]}")
                    times[impl] = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            traffic = 8 * args.ensemble * n * c * 4
            for impl, ms in times.items():
                gbps = traffic / ms / 1e6 if ms else None
                eager, inductor = times.get("eager"), times.get("compiled")
                rows.append({
                    "n": n, "c": c, "e": args.ensemble, "relu": args.relu, "impl": impl, "ms": ms,
                    "gbps": gbps, "pct_peak": 100 * gbps / peak if gbps and peak else None,
                    "x_eager": eager / ms if eager and ms else None,
                    "x_inductor": inductor / ms if inductor and ms else None,
                })
            print_table(rows[-len(times):], COLUMNS)
            write_json("brn_kernel", device, rows, complete=False, **meta)  # a time limit keeps what ran

    print()
    print_table(rows, COLUMNS)
    json_path = write_json("brn_kernel", device, rows, complete=True, **meta)
    png_path = save_png(plot(rows, peak, f"BRN forward+backward, {env['device']}"), "brn_kernel", device)
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
