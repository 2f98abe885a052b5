"""CrossQ with the whole training loop on one GPU.

    import crossq_gpu
    result = crossq_gpu.train("gym:Pendulum-v1", total_steps=20_000)   # or your own env object
    policy = crossq_gpu.load_policy(result.run_dir)
    action = policy.predict(obs)                                        # in the env's own bounds

docs/api.md describes each name; `python -m crossq_gpu.learner --help` the CLI. The names
load on first use, so `import crossq_gpu` stays light and `python -m crossq_gpu.learner`
does not import the learner twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossq_gpu.api import TrainResult, train
    from crossq_gpu.checkpoint import CheckpointError
    from crossq_gpu.config import ConfigError
    from crossq_gpu.envs.base import EnvSourceError
    from crossq_gpu.learner import Interrupted
    from crossq_gpu.policy import Policy, load_policy
    from crossq_gpu.training import TrainingError

_HOMES = {
    "train": "api", "TrainResult": "api", "load_policy": "policy", "Policy": "policy",
    "ConfigError": "config", "CheckpointError": "checkpoint", "EnvSourceError": "envs.base",
    "TrainingError": "training", "Interrupted": "learner",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'crossq_gpu' has no attribute {name!r}")
    return getattr(importlib.import_module(f"crossq_gpu.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
