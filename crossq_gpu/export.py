"""`python -m crossq_gpu.export RUN_DIR --format torchscript|onnx --out FILE`.

Writes the deterministic policy, observations [N, obs_dim] float32 -> actions in the env's
own bounds ([N, act_dim] float32, or [N] int64 for discrete envs), as one file that runs
without crossq_gpu: `torch.jit.load(FILE)` (TorchScript) or any ONNX runtime (input "obs",
output "action", N free). ONNX export needs onnx and onnxscript (the `onnx` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import torch

from crossq_gpu.checkpoint import CheckpointError
from crossq_gpu.policy import Policy, load_policy

FORMATS = ("torchscript", "onnx")


def export_policy(policy: Policy, fmt: str, path: Path) -> None:
    """Trace policy.forward on a CPU example batch and write it as `fmt` to `path`.

    The trace is exact: the forward has no data-dependent control flow, and the batch size
    stays free (TorchScript traces sizes symbolically; ONNX gets a dynamic dimension N).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    missing = [m for m in ("onnx", "onnxscript") if fmt == "onnx" and importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"ONNX export needs {' and '.join(missing)}: pip install 'crossq-gpu[onnx]'")
    policy = policy.cpu()
    example = torch.zeros(2, policy.spec.obs_dim)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, which still loads everywhere
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        if fmt == "torchscript":
            torch.jit.trace(policy, example).save(str(path))
        else:
            torch.onnx.export(policy, (example,), str(path), dynamo=True, verbose=False, input_names=["obs"],
                              output_names=["action"], dynamic_shapes={"obs": {0: torch.export.Dim("N")}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossq_gpu.export",
                                description="Write a run's deterministic policy (obs -> action in the env's "
                                            "bounds) as a standalone TorchScript or ONNX file.")
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", metavar="FILE", required=True, help="e.g. policy.pt or policy.onnx")
    args = p.parse_args(argv)
    try:
        export_policy(load_policy(args.run), args.format, Path(args.out))
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
