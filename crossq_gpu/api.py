"""`crossq_gpu.train`: the learner from Python, on a named env or on your own env object.

A thin layer over the CLI's own path: keyword flags become the command line they stand for
(`learner.flags_to_argv`, parsed by `learner.parse_args`), a config dict merges over the
preset like a `--config` file, and `learner.train_from_args` runs it, as `main()` does. Only
the env differs: an object is wrapped by `envs.custom.env_source` and handed to the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossq_gpu import learner
from crossq_gpu.config import ConfigError
from crossq_gpu.envs.custom import EnvSource, env_source
from crossq_gpu.policy import Policy, load_policy


@dataclass
class TrainResult:
    """What a finished run left: its folder, its last metrics rows and its policy."""

    run_dir: Path
    """config.yaml, metrics.jsonl, checkpoint.pt and the TensorBoard events."""
    metrics: dict[str, dict[str, Any] | None]
    """{"train": the last train row, "eval": the last eval row (None if no evaluation ran)}."""
    policy: Policy
    """The final policy, loaded from the checkpoint onto the run's device."""


def train(env: Any, config: dict[str, Any] | str | Path | None = None, *, out: str | Path | None = None,
          **flags: Any) -> TrainResult:
    """Train CrossQ (or SAC) on `env` and return the run folder, last metrics and the policy.

    env: a name as on the CLI (`gym:Pendulum-v1`, `ant`, `package.module:factory`), a VecEnv,
      a gymnasium.Env, a Brax/MJX-style env (reset(key) / step(state, action)), or a
      zero-argument callable (a function or a class) returning one of these.
    config: a nested, possibly partial dict or a YAML file, merged over the preset that
      `preset` (default auto) picks.
    out: the run folder (default runs/<env>-<algo>-<seed>-<time>).
    flags: the CLI's shorthand flags as keywords (num_envs=, total_steps=, seed=, device=,
      algo=, eval_every=, preset=, resume=, set=[...], compile=, ...); they win over config.

    Raises ConfigError (unknown flag or field, bad value), EnvSourceError (an env object of
    no supported kind), CheckpointError, TrainingError (a NaN/Inf loss, after the last good
    checkpoint) and learner.Interrupted, a KeyboardInterrupt, on Ctrl-C (after a checkpoint).
    """
    source = None if isinstance(env, str) else env_source(env)
    argv = learner.flags_to_argv(flags) + [f"--env={env if source is None else source.name}"]
    if out is not None:
        argv.append(f"--out={out}")
    if isinstance(config, (str, Path)):
        argv.append(f"--config={config}")
        config = None
    args = learner.parse_args(argv, raise_errors=True)
    if source is not None:
        _fit_to_source(args, source)
    run = learner.train_from_args(args, config, source.make if source else None)
    return TrainResult(run.out_dir, _last_rows(run.out_dir / "metrics.jsonl"),
                       load_policy(run.checkpoint_path, run.device))


def _fit_to_source(args: Any, source: EnvSource) -> None:
    """An env object that fixes num_envs, or has no second copy to evaluate on, sets those flags."""
    if source.num_envs is not None:
        if args.num_envs not in (None, source.num_envs):
            raise ConfigError(f"num_envs={args.num_envs}, but env {source.name} holds {source.num_envs} envs")
        args.num_envs = source.num_envs
        if source.evaluable:
            args.eval_episodes = source.num_envs
    if not source.evaluable:
        if args.eval_every:
            raise ConfigError(f"eval_every={args.eval_every}: env {source.name} is one instance, with no second "
                              "copy to evaluate on; pass its class or a factory instead, or eval_every=0")
        args.eval_every = 0


def _last_rows(metrics: Path) -> dict[str, dict[str, Any] | None]:
    last: dict[str, dict[str, Any] | None] = {"train": None, "eval": None}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            last[row["kind"]] = row
    return last
