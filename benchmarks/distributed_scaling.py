"""How CrossQ's update scales over data-parallel ranks: K processes vs one, side by side.

    python -m benchmarks.distributed_scaling                          # CPU: gloo, K = 1, 2
    python -m benchmarks.distributed_scaling --ranks 1 2 4 8 --widths 256 2048 --batch-sizes 256 4096

Each K runs the learner's update (`Update.step`, gradients averaged and BatchRenorm
statistics synchronized over the ranks, as under torchrun) in K spawned processes, each
with its own buffer and the per-rank batch size given: weak scaling, the global batch is
K × batch. Reported: updates/s (every rank steps together), global transitions/s
(ups × batch × K), the speed-up over K = 1 and the efficiency (speed-up / K). On CPU the
`--threads` are split evenly between the ranks, so K = 2 has no more cores than K = 1; on
CUDA each rank gets its own GPU and NCCL. Writes benchmarks/results/distributed_scaling_<device>.json
and .png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import calibrate, pick_device, print_table, rate, save_png, write_json
from benchmarks.update_throughput import POLICY_DELAY, ours
from crossq_gpu.distributed import Ranks

COLUMNS = ["ranks", "width", "batch", "mode", "ups", "global_transitions_per_s", "speedup", "efficiency"]


def _rank_main(rank: int, k: int, folder: str, args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, args.threads // k))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{folder}/rendezvous-{k}",
                            rank=rank, world_size=k, device_id=device if cuda else None)
    ranks = Ranks(rank, k, dist.group.WORLD, dist.group.WORLD)
    torch.manual_seed(rank)
    rows = []
    try:
        for width in args.widths:
            for batch in args.batch_sizes:
                for mode in args.modes:
                    torch._dynamo.reset()
                    ups = _measure(ours("CrossQ", mode, width, batch, device, ranks=ranks), ranks, device, args)
                    rows.append({"ranks": k, "width": width, "batch": batch, "mode": mode,
                                 "ups": statistics.median(ups), "ups_rounds": ups})
    finally:
        dist.destroy_process_group()
    if ranks.main:
        (Path(folder) / f"rows-{k}.json").write_text(json.dumps(rows))


def _measure(run, ranks: Ranks, device: torch.device, args: argparse.Namespace) -> list[float]:
    """Updates/s per round; the step count is rank 0's choice, so every rank runs the same collectives."""
    steps = torch.tensor([calibrate(run, POLICY_DELAY, args.block_s)], device=device)
    dist.broadcast(steps, src=0)
    n = int(steps.item())
    ups = []
    for _ in range(args.rounds):
        dist.barrier()
        ups.append(rate(run, n))
    return ups


def plot(rows: list[dict], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key in dict.fromkeys((r["width"], r["batch"], r["mode"]) for r in rows):
        pts = sorted((r["ranks"], r["speedup"]) for r in rows if (r["width"], r["batch"], r["mode"]) == key)
        ax.plot(*zip(*pts), marker="o", label=f"critic {key[0]}, batch {key[1]}/rank, {key[2]}")
    ks = sorted({r["ranks"] for r in rows})
    ax.plot(ks, ks, "k--", alpha=0.4, label="ideal")
    ax.set(xlabel="ranks K", ylabel="global transitions/s ÷ (K = 1)", xticks=ks, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--ranks", type=int, nargs="+", help="process counts (default: CPU 1 2; CUDA 1, 2, … GPUs)")
    p.add_argument("--widths", type=int, nargs="+", default=[256], help="critic hidden widths")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256], help="per-rank batch sizes")
    p.add_argument("--modes", nargs="+", help="eager compiled graphed (default: CPU eager; CUDA graphed)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all, split between the ranks")
    p.add_argument("--rounds", type=int, default=7, help="timed blocks per point (median reported)")
    p.add_argument("--block-s", type=float, default=0.5, help="target seconds per timed block")
    args = p.parse_args(argv)

    cuda = pick_device(args.device).type == "cuda"
    args.device = "cuda" if cuda else "cpu"
    gpus = torch.cuda.device_count() if cuda else 0
    args.ranks = args.ranks or ([k for k in (1, 2, 4, 8) if k <= gpus] if cuda else [1, 2])
    args.modes = args.modes or (["graphed"] if cuda else ["eager"])
    if cuda and max(args.ranks) > gpus:
        p.error(f"--ranks {max(args.ranks)} needs as many GPUs; this machine has {gpus}")
    if "graphed" in args.modes and not cuda:
        p.error("--modes graphed needs CUDA")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for k in args.ranks:
            mp.spawn(_rank_main, args=(k, folder, args), nprocs=k, join=True)
            rows += json.loads((Path(folder) / f"rows-{k}.json").read_text())
    for r in rows:
        r["global_transitions_per_s"] = r["ups"] * r["batch"] * r["ranks"]
        base = next((b for b in rows if b["ranks"] == min(args.ranks) and
                     (b["width"], b["batch"], b["mode"]) == (r["width"], r["batch"], r["mode"])), None)
        r["speedup"] = r["global_transitions_per_s"] / base["global_transitions_per_s"] * min(args.ranks)
        r["efficiency"] = r["speedup"] / r["ranks"]
    print_table(rows, COLUMNS)
    device = torch.device(args.device)
    path = write_json("distributed_scaling", device, rows, threads=args.threads if not cuda else None,
                      rounds=args.rounds, block_s=args.block_s, policy_delay=POLICY_DELAY,
                      backend="nccl" if cuda else "gloo")
    fig = plot(rows, f"data-parallel CrossQ update — {args.device}, {'nccl' if cuda else 'gloo'}")
    print(f"wrote {path} and {save_png(fig, 'distributed_scaling', device)}")


if __name__ == "__main__":
    main()
