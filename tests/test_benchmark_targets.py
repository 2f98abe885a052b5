"""benchmarks.targets reads the results the way the targets are stated; a sweep that would time
nothing is refused before it starts."""

import json
from pathlib import Path

import pytest

from benchmarks.targets import all_checks


def _brn_row(n: int, c: int, impl: str, ms: float, x_inductor: float, pct_peak: float) -> dict:
    return {"n": n, "c": c, "impl": impl, "ms": ms, "x_inductor": x_inductor, "pct_peak": pct_peak}


def test_targets_from_gpu_and_cpu_results(tmp_path: Path) -> None:
    gpu = {"environment": {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"}, "rows": [
        _brn_row(8192, 256, "triton", 0.01, 0.5, 10.0),  # below N = 32,768: not a target
        _brn_row(32768, 256, "triton", 0.20, 1.0, 50.0),
        _brn_row(32768, 256, "triton_compiled", 0.12, 1.7, 80.0),  # the faster Triton row counts
        _brn_row(32768, 256, "compiled", 0.20, 1.0, 48.0),
        _brn_row(131072, 256, "triton", 0.50, 1.2, 72.0),
    ]}
    (tmp_path / "brn_kernel_nvidia_h100_80gb_hbm3.json").write_text(json.dumps(gpu))
    cpu = {"environment": {"device": "AMD EPYC", "device_type": "cpu"}, "rows": [
        {"width": 256, "batch": 256, "impl": "CrossQ", "mode": "compiled", "x_sb3": 2.3, "x_sbx": 0.7},
        {"width": 256, "batch": 256, "impl": "CrossQ", "mode": "eager", "x_sb3": 1.7, "x_sbx": 0.5},
        {"width": 256, "batch": 256, "impl": "CrossQ", "mode": "fused", "x_sb3": 3.1, "x_sbx": 1.05},
    ]}
    (tmp_path / "update_throughput_cpu.json").write_text(json.dumps(cpu))
    for device, slug, memory in (("NVIDIA H200", "nvidia_h200", {"torch_max_allocated_gib": 17.5, "jax_peak_gib": 2.5}),
                                 ("NVIDIA L4", "nvidia_l4", {"torch_max_allocated_gib": 21.0, "jax_peak_gib": 3.5})):
        doc = {"environment": {"device": device, "device_type": "cuda"}, "memory": memory, "rows": []}
        (tmp_path / f"learner_check_{slug}.json").write_text(json.dumps(doc))
    cpu_run = {"environment": {"device": "AMD EPYC", "device_type": "cpu"}, "memory": {}, "rows": []}
    (tmp_path / "learner_check_cpu.json").write_text(json.dumps(cpu_run))  # no GPU memory to check

    status = {(c.target, c.device): (c.measured, c.status) for c in all_checks(tmp_path)}

    h100 = "NVIDIA H100 80GB HBM3"
    assert status[("Triton fwd+bwd ÷ Inductor, N=32768 C=256", h100)] == (1.7, "met")
    assert status[("Triton % of peak bandwidth, N=32768 C=256", h100)] == (80.0, "met")
    assert status[("Triton fwd+bwd ÷ Inductor, N=131072 C=256", h100)] == (1.2, "missed")
    assert status[("Triton % of peak bandwidth, N=131072 C=256", h100)] == (72.0, "met")
    assert not any("N=8192" in target for target, _ in status)
    # the fused row (the learner's compiled update) counts over the compiled-losses one
    assert status[("CPU updates/s ÷ sb3-contrib CrossQ (256×2, batch 256)", "AMD EPYC")] == (3.1, "met")
    assert status[("CPU updates/s ÷ SBX CrossQ (aim)", "AMD EPYC")] == (1.05, "met")
    memory = "learner GiB left of 24 (24 − torch − JAX peak)"
    assert status[(memory, "NVIDIA H200")] == (4.0, "met")
    assert status[(memory, "NVIDIA L4")] == (-0.5, "missed")
    assert not any(device == "AMD EPYC" for target, device in status if target == memory)


def test_targets_without_results_are_not_measured(tmp_path: Path) -> None:
    assert {c.status for c in all_checks(tmp_path)} == {"not measured"}


def test_update_throughput_refuses_a_sweep_with_no_point_under_its_cost_cap(capsys) -> None:
    """On a CPU the default cap is batch × width 256 × 2,048: batch 4,096 at width 256 is above it.
    The refusal comes before the benchmark sets anything process-wide (torch's thread count)."""
    import torch

    from benchmarks import update_throughput

    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as exit_:
        update_throughput.main(["--device", "cpu", "--widths", "256", "--batch-sizes", "4096", "--compare",
                                "--threads", str(threads + 1)])
    assert exit_.value.code == 2
    assert "above --max-cost 524288" in capsys.readouterr().err
    assert torch.get_num_threads() == threads
