"""The learner end to end for a fixed time: steady-state sps and ups, and peak memory under a 24 GiB cap.

    python -m benchmarks.learner_check --seconds 45 -- --env ant --num-envs 4096 --eval-every 0 --checkpoint-every 0
    python -m benchmarks.learner_check --seconds 5 -- --env gym:Pendulum-v1 --num-envs 1   # on a CPU

Runs `crossq_gpu.learner` in this process and, after `--seconds`, stops it as Ctrl-C does (it
finishes its step, logs a last row and checkpoints). The metrics row in which the first
updates ran also holds JAX's compile of the env, torch.compile of the update and the CUDA-graph
captures, so steady state is measured from the end of that row to the last row.

On CUDA the process gets what a 24 GiB card holds — torch through
`set_per_process_memory_fraction`, JAX through `XLA_PYTHON_CLIENT_MEM_FRACTION`, both set
before either allocates — so a run that needs more fails here instead of passing on a larger
card whose caches grow with it. The result reports `torch.cuda.max_memory_allocated` and
JAX's `peak_bytes_in_use`. Writes benchmarks/results/<name>_<device>.json (`--name`, default
learner_check).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_json
from crossq_gpu import learner

GIB = 2**30


def steady_state(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Env steps and updates per second after compiling: from the end of the first train row with
    updates (compiles and captures happen there) to the last row; None if no row follows it."""
    train = [r for r in rows if r.get("kind") == "train"]
    first = next((i for i, r in enumerate(train) if r["grad_steps"] > 0), None)
    if first is None or first == len(train) - 1:
        return None
    start, end = train[first], train[-1]
    seconds = end["wall_s"] - start["wall_s"]
    if seconds <= 0:
        return None
    return {"sps": (end["env_steps"] - start["env_steps"]) / seconds,
            "ups": (end["grad_steps"] - start["grad_steps"]) / seconds,
            "from_wall_s": start["wall_s"], "window_s": seconds, "rows": len(train) - 1 - first}


def cap_memory(torch_gib: float, jax_gib: float) -> dict[str, float]:
    """Limit torch and JAX (not yet started) to their shares of a consumer card."""
    total = torch.cuda.get_device_properties(0).total_memory
    if (torch_gib + jax_gib) * GIB > total:
        raise SystemExit(f"error: --torch-gib + --jax-gib = {torch_gib + jax_gib} GiB exceeds this "
                         f"GPU's {total / GIB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(torch_gib * GIB / total)
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{jax_gib * GIB / total:.4f}"
    return {"torch_cap_gib": torch_gib, "jax_cap_gib": jax_gib, "device_gib": total / GIB}


def jax_peak_gib() -> float | None:
    """JAX's peak GPU bytes in use, if this process started JAX on a GPU."""
    if "jax" not in sys.modules:
        return None
    stats = sys.modules["jax"].local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / GIB


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # before or after the learner's own handlers: stop where we are


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, required=True, help="wall time before the learner is stopped")
    p.add_argument("--torch-gib", type=float, default=18.0, help="torch's cap on CUDA (GiB)")
    p.add_argument("--jax-gib", type=float, default=6.0, help="JAX's cap on CUDA (GiB); the two share the 24 GiB card")
    p.add_argument("--name", default="learner_check", help="the results file's stem, to keep two variants apart")
    p.add_argument("learner_args", nargs=argparse.REMAINDER, help="-- then the learner's own arguments")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error(f"--seconds must be > 0, got {args.seconds}")
    learner_args = args.learner_args[1:] if args.learner_args[:1] == ["--"] else args.learner_args
    if "--out" in learner_args or "--resume" in learner_args:
        p.error("the learner's run folder is a fresh one under runs/: do not pass --out or --resume")

    cuda = torch.cuda.is_available()
    memory: dict[str, float | None] = cap_memory(args.torch_gib, args.jax_gib) if cuda else {}
    Path("runs").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="learner_check-", dir="runs"))
    signal.signal(signal.SIGTERM, _interrupt)
    fired = threading.Event()
    # SIGTERM, which the learner handles as Ctrl-C: a shell's background job may ignore SIGINT.
    timer = threading.Timer(args.seconds, lambda: (fired.set(), os.kill(os.getpid(), signal.SIGTERM)))
    timer.start()
    try:
        code = learner.main([*learner_args, "--out", str(out)])
    except KeyboardInterrupt:
        code = learner.EXIT_INTERRUPTED
        print("learner_check: stopped before the training loop began", file=sys.stderr)
    finally:
        timer.cancel()
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steady = steady_state(rows)
    if cuda:
        memory.update(torch_max_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                      torch_max_reserved_gib=torch.cuda.max_memory_reserved() / GIB, jax_peak_gib=jax_peak_gib())
    device = torch.device("cuda" if cuda else "cpu")
    path = write_json(args.name, device, rows, learner_args=learner_args, seconds=args.seconds,
                      learner_exit=code, steady=steady, memory=memory, run_dir=str(out))
    print(f"learner_check: steady state {steady}; memory {memory}; wrote {path}")
    if code not in (0, learner.EXIT_INTERRUPTED) or (code and not fired.is_set()):
        return code  # failed, or stopped from outside
    if steady is None:
        print("learner_check: no steady-state figure: no metrics row came after the compiles "
              "(raise --seconds or log more often)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
