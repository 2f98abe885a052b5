"""The issues' numeric targets, read from the benchmark results: met, missed or not measured.

    python -m benchmarks.targets                                  # benchmarks/results/
    python -m benchmarks.targets --memory-csv $OUT/gpu_memory.csv # + the learner's GPU memory

- Issue 6, on each GPU with `brn_kernel_<gpu>.json`: for every C at N >= 32,768, the faster
  Triton row (eager or compiled) is >= 1.5x Inductor (`x_inductor`) and >= 70 % of the
  device's peak DRAM bandwidth.
- Issue 7, on the CPU (`update_throughput_cpu.json`, 256x2 critic, batch 256): compiled
  CrossQ >= 2x sb3-contrib's CrossQ, and the aim, faster than SBX's.
- Issue 7, on a GPU: the ant-4096 run's peak memory (nvidia-smi samples) fits 24 GiB.

gpu_check.sh prints this at the end, so a lent GPU's log says at once where the targets stand.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS_DIR, print_table

TRITON_X_INDUCTOR = 1.5
TRITON_PCT_PEAK = 70.0
TRITON_MIN_N = 32_768
CPU_X_SB3 = 2.0
CONSUMER_GPU_MIB = 24 * 1024


@dataclass
class Check:
    issue: int
    target: str
    device: str
    measured: float | None
    required: float

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        return "met" if self.measured >= self.required else "missed"

    def row(self) -> dict:
        return {"issue": self.issue, "target": self.target, "device": self.device,
                "measured": self.measured, "required": self.required, "status": self.status}


def _results(results_dir: Path, name: str) -> list[tuple[str, dict]]:
    """(device name, document) for every `<name>_<device>.json`."""
    docs = []
    for path in sorted(results_dir.glob(f"{name}_*.json")):
        doc = json.loads(path.read_text())
        docs.append((doc["environment"]["device"], doc))
    return docs


def brn_kernel_checks(results_dir: Path) -> list[Check]:
    checks = []
    for device, doc in _results(results_dir, "brn_kernel"):
        if doc["environment"]["device_type"] != "cuda":
            continue
        rows = [r for r in doc["rows"] if r["n"] >= TRITON_MIN_N]
        for n, c in sorted({(r["n"], r["c"]) for r in rows}):
            triton = [r for r in rows if (r["n"], r["c"]) == (n, c) and r["impl"].startswith("triton") and r["ms"]]
            best = min(triton, key=lambda r: r["ms"]) if triton else {}
            where = f"N={n} C={c}"
            checks.append(Check(6, f"Triton fwd+bwd ÷ Inductor, {where}", device, best.get("x_inductor"),
                                TRITON_X_INDUCTOR))
            checks.append(Check(6, f"Triton % of peak bandwidth, {where}", device, best.get("pct_peak"),
                                TRITON_PCT_PEAK))
    if not checks:
        checks.append(Check(6, f"Triton vs Inductor at N >= {TRITON_MIN_N}", "GPU", None, TRITON_X_INDUCTOR))
    return checks


def cpu_update_checks(results_dir: Path) -> list[Check]:
    path = results_dir / "update_throughput_cpu.json"
    doc = json.loads(path.read_text()) if path.exists() else {"rows": [], "environment": {"device": "CPU"}}
    row = next((r for r in doc["rows"] if (r["width"], r["batch"], r["impl"], r["mode"]) ==
                (256, 256, "CrossQ", "compiled")), {})
    device = doc["environment"]["device"]
    return [Check(7, "CPU updates/s ÷ sb3-contrib CrossQ (256×2, batch 256)", device, row.get("x_sb3"), CPU_X_SB3),
            Check(7, "CPU updates/s ÷ SBX CrossQ (aim)", device, row.get("x_sbx"), 1.0)]


def peak_memory_mib(memory_csv: Path) -> float | None:
    """Largest `memory.used [MiB]` in an nvidia-smi --format=csv log (several GPUs: per sample row)."""
    peak = None
    with memory_csv.open() as f:
        for record in csv.reader(f):
            if len(record) < 2 or not record[1].strip().endswith("MiB"):
                continue  # the header, or a line cut by the sampler being killed
            used = float(record[1].strip().removesuffix("MiB"))
            peak = used if peak is None else max(peak, used)
    return peak


def memory_check(memory_csv: Path | None) -> Check:
    peak = peak_memory_mib(memory_csv) if memory_csv and memory_csv.exists() else None
    # Required is the headroom: 24 GiB minus the peak must be >= 0.
    return Check(7, "ant-4096 GiB free on a 24 GiB card (24 − peak used)", "GPU",
                 None if peak is None else (CONSUMER_GPU_MIB - peak) / 1024, 0.0)


def all_checks(results_dir: Path, memory_csv: Path | None = None) -> list[Check]:
    return [*brn_kernel_checks(results_dir), *cpu_update_checks(results_dir), memory_check(memory_csv)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of benchmark JSON files")
    p.add_argument("--memory-csv", type=Path, help="nvidia-smi memory log of the ant-4096 run (gpu_check.sh)")
    args = p.parse_args(argv)
    print_table([c.row() for c in all_checks(args.results, args.memory_csv)],
                ["issue", "target", "device", "measured", "required", "status"])


if __name__ == "__main__":
    main()
