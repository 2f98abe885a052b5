"""Small shared helpers for the benchmark scripts: timing, results as data, a plot, a table.

Every benchmark writes `benchmarks/results/<name>_<device>.json` holding `environment()`
(device, peak bandwidth, versions, git commit) and its rows, saves a PNG next to it, and
prints the rows as a table. Absolute times on shared machines vary, so a benchmark should
compare its variants side by side in one run and report ratios too.

    device = pick_device(args.device)
    env = environment(device)
    ms = bench_ms(lambda: step(), device)
    rows.append({"n": n, "impl": "triton", "ms": ms})
    print_table(rows, ["n", "impl", "ms"])
    write_json("brn_kernel", device, rows, sweep={...})
    save_png(fig, "brn_kernel", device)
"""

import json
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: benchmarks run on servers and in CI
import torch
from matplotlib.figure import Figure

from crossq_gpu.atomic import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Peak DRAM bandwidth (GB/s) by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_GBPS: list[tuple[str, float]] = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("A10G", 600.0),
    ("L4", 300.0),
]


def pick_device(name: str) -> torch.device:
    """A benchmark's --device as the learner resolves it (auto: CUDA where there is one); a device
    that is not there, or no device at all, exits with one line."""
    from crossq_gpu.config import ConfigError
    from crossq_gpu.learner import resolve_device  # here: benchmarks.targets must start fast

    try:
        return resolve_device(name)
    except ConfigError as exc:  # it names the flag
        raise SystemExit(f"error: {exc}") from None
    except RuntimeError as exc:  # torch.device's own words for a name it does not know
        raise SystemExit(f"error: --device {name}: {exc}") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU model; platform.processor() is often empty there
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or device.type


def peak_gbps(device: torch.device) -> float | None:
    """Peak memory bandwidth of a known GPU, else None (CPUs and unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    return next((gbps for key, gbps in PEAK_GBPS if key in name), None)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    """What a result was measured on: device, peak bandwidth, library versions, git commit."""
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    status = _git("status", "--porcelain")
    return {
        "device": device_name(device),
        "device_type": device.type,
        "peak_gbps": peak_gbps(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def bench_ms(fn: Callable[[], object], device: torch.device, *, rep_ms: float = 200.0) -> float:
    """Median wall time of fn() in ms: triton.testing.do_bench on CUDA, a perf_counter loop elsewhere."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, rep=int(rep_ms), return_mode="median"))
    fn()  # warm-up (allocator, lazy init)
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 100):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def calibrate(run: Callable[[int], object], unit: int, block_s: float) -> int:
    """Steps for one timed block of about block_s seconds, a multiple of `unit`: run(unit) once to
    warm up (compile, capture, allocate), then once timed."""
    run(unit)
    start = time.perf_counter()
    run(unit)
    per_step = (time.perf_counter() - start) / unit
    return unit * max(1, round(block_s / per_step / unit))


def rate(run: Callable[[int], object], steps: int) -> float:
    """Steps per second of run(steps), which must return only when its work is finished."""
    start = time.perf_counter()
    run(steps)
    return steps / (time.perf_counter() - start)


def _slug(device: torch.device) -> str:
    return device.type if device.type != "cuda" else re.sub(r"[^a-z0-9]+", "_", device_name(device).lower()).strip("_")


def result_path(name: str, device: torch.device, suffix: str) -> Path:
    """benchmarks/results/<name>_<device slug><suffix>, e.g. brn_kernel_nvidia_h100_80gb_hbm3.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR / f"{name}_{_slug(device)}{suffix}"


def write_json(name: str, device: torch.device, rows: list[dict[str, Any]], **meta: Any) -> Path:
    """Write {"benchmark", "environment", **meta, "rows"} atomically (a killed run leaves the last
    complete file) and return the path."""
    path = result_path(name, device, ".json")
    doc = {"benchmark": name, "environment": environment(device), **meta, "rows": rows}
    atomic_write(path, lambda f: f.write((json.dumps(doc, indent=2, default=str) + "\n").encode()))
    return path


def save_png(fig: Figure, name: str, device: torch.device) -> Path:
    path = result_path(name, device, ".png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Aligned plain-text table; floats to 3 significant digits, None as '-'."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
