"""The numeric GPU and CPU targets, read from the benchmark results: met, missed or not measured.

    python -m benchmarks.targets                  # benchmarks/results/
    python -m benchmarks.targets --results DIR    # another folder of results

- On each GPU with `brn_kernel_<gpu>.json`: for every C at N >= 32,768, the faster Triton row
  (eager or compiled) is >= 1.5x Inductor (`x_inductor`) and >= 70 % of the device's peak DRAM
  bandwidth.
- On the CPU (`update_throughput_cpu.json`, 256x2 critic, batch 256): compiled CrossQ (the fused
  step where the results have it) >= 2x sb3-contrib's CrossQ, and the aim, faster than SBX's.
- On each GPU with `learner_check_<gpu>.json` (ant at 4,096 envs, capped to 24 GiB): torch's
  peak allocation plus JAX's peak fits 24 GiB.

gpu_check.sh prints this at the end, so a lent GPU's log says at once where the targets stand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS_DIR, print_table

TRITON_X_INDUCTOR = 1.5
TRITON_PCT_PEAK = 70.0
TRITON_MIN_N = 32_768
CPU_X_SB3 = 2.0
CONSUMER_GPU_GIB = 24.0


@dataclass
class Check:
    benchmark: str
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
        return {"benchmark": self.benchmark, "target": self.target, "device": self.device,
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
            checks.append(Check("brn_kernel", f"Triton fwd+bwd ÷ Inductor, {where}", device,
                                best.get("x_inductor"), TRITON_X_INDUCTOR))
            checks.append(Check("brn_kernel", f"Triton % of peak bandwidth, {where}", device,
                                best.get("pct_peak"), TRITON_PCT_PEAK))
    if not checks:
        checks.append(Check("brn_kernel", f"Triton vs Inductor at N >= {TRITON_MIN_N}", "GPU", None,
                            TRITON_X_INDUCTOR))
    return checks


def cpu_update_checks(results_dir: Path) -> list[Check]:
    path = results_dir / "update_throughput_cpu.json"
    doc = json.loads(path.read_text()) if path.exists() else {"rows": [], "environment": {"device": "CPU"}}
    # The learner's compiled update is the fused step; results from before it have only "compiled".
    rows = {r["mode"]: r for r in doc["rows"] if (r["width"], r["batch"], r["impl"]) == (256, 256, "CrossQ")}
    row = rows.get("fused", rows.get("compiled", {}))
    device = doc["environment"]["device"]
    return [Check("update_throughput", "CPU updates/s ÷ sb3-contrib CrossQ (256×2, batch 256)", device,
                  row.get("x_sb3"), CPU_X_SB3),
            Check("update_throughput", "CPU updates/s ÷ SBX CrossQ (aim)", device, row.get("x_sbx"), 1.0)]


def memory_checks(results_dir: Path) -> list[Check]:
    """Headroom left on a 24 GiB card: 24 minus torch's and JAX's peaks, which must be >= 0."""
    target = "learner GiB left of 24 (24 − torch − JAX peak)"
    checks = []
    for device, doc in _results(results_dir, "learner_check"):
        if doc["environment"]["device_type"] != "cuda":
            continue
        memory = doc.get("memory", {})
        torch_gib = memory.get("torch_max_allocated_gib")
        left = None if torch_gib is None else CONSUMER_GPU_GIB - torch_gib - (memory.get("jax_peak_gib") or 0.0)
        checks.append(Check("learner_check", target, device, left, 0.0))
    return checks or [Check("learner_check", target, "GPU", None, 0.0)]


def all_checks(results_dir: Path) -> list[Check]:
    return [*brn_kernel_checks(results_dir), *cpu_update_checks(results_dir), *memory_checks(results_dir)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of benchmark JSON files")
    args = p.parse_args(argv)
    print_table([c.row() for c in all_checks(args.results)],
                ["benchmark", "target", "device", "measured", "required", "status"])


if __name__ == "__main__":
    main()
