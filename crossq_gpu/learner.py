"""`python -m crossq_gpu.learner`: the command line of a training run (the loop is `training.py`).

Flags, a preset, a `--config` file and `--set` resolve to one `Config` (`configure.py`); the
run folder is made, the run built and, on `--resume`, restored from its checkpoint; then it
trains. Bad input is one line on stderr and a non-zero exit; `crossq_gpu.train` takes the
same path and gets exceptions instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from crossq_gpu import configure, distributed
from crossq_gpu.checkpoint import CheckpointError, load_checkpoint
from crossq_gpu.config import Config, ConfigError, field_info
from crossq_gpu.distributed import Ranks
from crossq_gpu.envs import VecEnv
from crossq_gpu.training import Run, TrainingError

EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 2, 3, 130


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training between two steps, after writing the checkpoint."""


class _Parser(argparse.ArgumentParser):
    raise_errors = False  # the Python API wants a ConfigError, not an exit

    def error(self, message: str) -> None:  # one line, not usage + error
        if self.raise_errors:
            raise ConfigError(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# The flags that set one config field each; their type, choices and help come from the field.
FLAG_FIELDS = {
    "env": "env.name", "num_envs": "env.num_envs", "backend": "env.backend",
    "total_steps": "run.total_steps", "seed": "run.seed", "device": "run.device",
    "eval_every": "run.eval_every", "eval_episodes": "run.eval_episodes", "log_every": "run.log_every",
    "checkpoint_every": "run.checkpoint_every", "compile": "run.compile",
    "cuda_graphs": "run.cuda_graphs", "save_buffer": "run.save_buffer",
}
ALGO_FIELD = "agent.algorithm.name"
ALGOS = {name.lower(): name for name in typing.get_args(field_info(ALGO_FIELD)[0])}  # --algo crossq → CrossQ


def parse_args(argv: list[str] | None = None, *, raise_errors: bool = False) -> argparse.Namespace:
    p = _Parser(prog="python -m crossq_gpu.learner",
                description="Train CrossQ (or the SAC baseline) on Brax/MJX or Gymnasium envs.")
    p.raise_errors = raise_errors
    for flag, path in FLAG_FIELDS.items():
        p.add_argument("--" + flag.replace("_", "-"), **_field_argument(path))
    p.add_argument("--algo", choices=list(ALGOS), help=_help(field_info(ALGO_FIELD)[1]))
    p.add_argument("--preset", default="auto",
                   help="auto (paper on CUDA, cpu otherwise, with the many-env regime for --num-envs "
                        f"above 1: docs/regime.md) or one of: {', '.join(configure.PRESETS)}")
    p.add_argument("--config", metavar="FILE", help="YAML config merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override any field, value parsed as YAML (repeatable), "
                        "e.g. --set agent.algorithm.training_start_step=500")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<env>-<algo>-<seed>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt")
    return p.parse_args(argv)


def _field_argument(path: str) -> dict[str, Any]:
    """add_argument's keywords for a flag that sets the field at `path`: not given is None."""
    tp, doc = field_info(path)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction, "default": None, "help": _help(doc)}
    if typing.get_origin(tp) is Literal:
        return {"choices": typing.get_args(tp), "help": _help(doc)}
    return {"type": tp, "help": _help(doc)}


def _help(doc: str) -> str:
    """A field's docstring as one line of --help (argparse reads % as a format)."""
    return " ".join(doc.replace("`", "").split()).replace("%", "%%")


def flags_to_argv(flags: dict[str, Any]) -> list[str]:
    """Python keywords (num_envs=8, compile=False, set=["a.b=1"]) as the command line they stand for.

    Parsed by parse_args, they get the CLI's types, choices and field paths. env, config
    and out are crossq_gpu.train's own parameters; None means not given.
    """
    known = sorted(set(vars(parse_args([]))) - {"env", "config", "out"})
    argv = []
    for key, value in flags.items():
        if key not in known:
            raise ConfigError(f"unknown flag {key}= (known: {', '.join(known)})")
        option = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(option if value else f"--no-{option[2:]}")
        elif isinstance(value, (list, tuple)):
            if key != "set":
                raise ConfigError(f"{key}= takes one value, got {value!r}")
            argv += [f"{option}={item}" for item in value]
        else:
            argv.append(f"{option}={value}")
    return argv


def resolve_config(args: argparse.Namespace, config_tree: dict[str, Any] | None = None) -> tuple[Config, str]:
    """Preset < --config (or the resumed run's config.yaml, or config_tree, the Python API's
    nested partial dict) < flags and --set."""
    if config_tree is not None and not isinstance(config_tree, dict):
        raise ConfigError(f"config must be a dict or a YAML file path, got {type(config_tree).__name__}")
    flags = {path: getattr(args, flag) for flag, path in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    if args.algo is not None:
        flags[ALGO_FIELD] = ALGOS[args.algo]
    config_file = args.config
    if args.resume is not None:
        if args.config is not None or config_tree:
            raise ConfigError("--resume continues with the run's own config.yaml; drop --config (config=)")
        config_file = str(Path(args.resume) / "config.yaml")
    return configure.build_config(args.preset, torch.cuda.is_available(), config_file, args.set, flags,
                                  config_tree)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def default_out_dir(cfg: Config) -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env.name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{env}-{cfg.agent.algorithm.name.lower()}-{cfg.run.seed}-{stamp}"


def prepare_out_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write there ({exc.strerror})") from None
    return path


def train_from_args(args: argparse.Namespace, config_tree: dict[str, Any] | None = None,
                    env_maker: Callable[..., VecEnv] | None = None) -> Run:
    """Resolve the config, build the run, restore it on --resume, train, save: what main() and
    crossq_gpu.train share. Bad input raises ConfigError, CheckpointError or ValueError (a bad
    config before the out dir is made), a NaN/Inf loss TrainingError, Ctrl-C Interrupted."""
    main_rank = distributed.env_rank() == 0  # every rank meets the same bad input; one says so
    ranks = Ranks()
    try:
        distributed.pin_local_gpu()
        cfg, preset = resolve_config(args, config_tree)
        device = resolve_device(cfg.run.device)
        payload = load_checkpoint(Path(args.resume)) if args.resume else None
        out_dir = Path(args.resume or args.out or default_out_dir(cfg))
        if main_rank:
            prepare_out_dir(out_dir)
        ranks = distributed.start(device)
        if ranks.main:
            scale = f"{ranks.world} ranks x {cfg.env.num_envs}" if ranks.world > 1 else f"{cfg.env.num_envs}"
            print(f"crossq_gpu: preset {preset}, {cfg.agent.algorithm.name} on {cfg.env.name} "
                  f"({scale} envs), device {device}, out {out_dir}", flush=True)
            print(f"crossq_gpu: {configure.describe_regime(cfg)}", flush=True)
            if preset == "cpu":
                default_task = configure.PRESETS["cpu"]["env"]["name"]
                task = (f"; default task {default_task}, learns in a few minutes on 2 cores"
                        if cfg.env.name == default_task else "")
                critics = "x".join(map(str, cfg.agent.critic_net.hidden))
                print(f"crossq_gpu: no CUDA device: using the cpu preset (critics {critics}{task})", flush=True)
        run = Run(cfg, out_dir, device, ranks, env_maker)
        if payload is not None:
            run.restore(payload)
        if ranks.main:
            configure.save_yaml(run.cfg, out_dir / "config.yaml")
        if not run.train():
            raise Interrupted(f"stopped at env step {run.counters.env_steps}; checkpoint in {run.checkpoint_path}")
    finally:
        distributed.stop(ranks)
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    main_rank = distributed.env_rank() == 0
    try:
        run = train_from_args(args)
    except Interrupted:
        return EXIT_INTERRUPTED
    except TrainingError as exc:
        return _fail(exc, EXIT_NONFINITE, main_rank)
    except (ConfigError, CheckpointError, ValueError) as exc:
        return _fail(exc, EXIT_USAGE, main_rank or isinstance(exc, distributed.RankSetupError))
    if main_rank:
        print(f"done: {run.counters.env_steps} env steps; results in {run.out_dir}")
    return 0


def _fail(exc: Exception, code: int, show: bool) -> int:
    if show:
        print(f"error: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
