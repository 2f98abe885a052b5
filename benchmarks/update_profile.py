"""Kernels and dispatch per gradient update, by mode, from torch.profiler on a CPU run.

    python -m benchmarks.update_profile                      # CrossQ, critic 256×2, batch 256
    python -m benchmarks.update_profile --algo SAC --width 2048

The update of `benchmarks/update_throughput.py` (obs 17, act 6, actor 256×2, policy_delay 3) runs
`--updates` steps (a multiple of 3: both variants in their proportion) under the profiler in each
mode. Counted per update: the leaf aten ops (ops that call no other aten op: what becomes a
kernel on a GPU), the fused kernels Inductor generated (recorded by
`torch._inductor.config.cpp.enable_kernel_profile`), their sum, and the time in Dynamo's cache
lookup (guard evaluation). On a GPU a captured graph replays one kernel per counted one, so the
ratio of the sums is the ratio of kernels a CUDA graph of each mode launches per update.
Writes benchmarks/results/update_profile_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import print_table, write_json
from benchmarks.update_throughput import MODES, POLICY_DELAY, ours

COLUMNS = ["mode", "kernels", "aten_leaf_ops", "inductor_kernels", "guard_us", "profiled_ms"]
GUARDS = "TorchDynamo Cache Lookup"


def count(prof: profile, updates: int) -> dict:
    """Per-update counts of one profiled run (see the module docstring)."""
    leaf, fused = 0, 0
    for event in prof.events():
        if event.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in event.cpu_children):
            leaf += 1
        elif "cpp_fused" in event.name:  # graph_<id>_cpp_fused_<ops>
            fused += 1
    totals = Counter()
    for avg in prof.key_averages():
        totals[avg.key] += avg.self_cpu_time_total
    return {"kernels": (leaf + fused) / updates, "aten_leaf_ops": leaf / updates, "inductor_kernels": fused / updates,
            "guard_us": totals[GUARDS] / updates, "profiled_ms": sum(totals.values()) / 1e3 / updates}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["CrossQ", "SAC"], default="CrossQ")
    p.add_argument("--width", type=int, default=256, help="critic hidden width (× 2 layers)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--modes", nargs="+", choices=[m for m in MODES if m != "graphed"],
                   default=["eager", "compiled", "fused"])
    p.add_argument("--updates", type=int, default=4 * POLICY_DELAY, help="profiled updates per mode")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        for mode in args.modes:
            run = ours(args.algo, mode, args.width, args.batch, device)
            run(2 * POLICY_DELAY)  # compile both variants, then one round without first-call costs
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run(args.updates)
            rows.append({"mode": mode, **count(prof, args.updates)})
    print_table(rows, COLUMNS)
    path = write_json("update_profile", device, rows, algo=args.algo, width=args.width, batch=args.batch,
                      updates=args.updates, threads=args.threads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
