"""A run's `Config`, from the preset, the many-env regime, a YAML file, flags and `--set`.

Presets are dictionaries of overrides on the schema's defaults (data, not classes); the
many-env regime is a rule that derives more of them from num_envs and the device. Each
layer merges over the one before, and the result is checked once by `config.from_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crossq_gpu.atomic import atomic_write
from crossq_gpu.config import Config, ConfigError, coerce, from_dict, to_dict

# Presets are overrides on top of the dataclass defaults, which are the paper's values.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A 2-core CPU: narrow critics, and a default task that visibly learns in minutes.
    "cpu": {
        "env": {"name": "gym:Pendulum-v1", "num_envs": 1},
        "agent": {"critic_net": {"hidden": [256, 256]}},
        "run": {"total_steps": 20_000, "eval_every": 2_000, "eval_episodes": 5,
                "checkpoint_every": 10_000, "compile": False},
    },
}


# The many-env regime: what `--preset auto` sets from num_envs (when > 1) and the device, for
# any env. As num_envs grows it holds constant:
# - the replay ratio, batch × training_iter / (num_envs × training_frequency): each
#   transition is sampled about `replay_ratio` times while it is in the buffer;
# - the run's gradient steps (total_steps follows from them, unless given);
# - the BRN warmup as a share of those gradient steps (it must end well inside the run);
# - the initial temperature α₀ (α updates come once per several hundred transitions here, so
#   α₀ = 1 would take most of the run to come down);
# - the eval / log / checkpoint intervals, counted in vector steps.
# The batch grows with num_envs up to a cap per device (on a GPU a step at 16k rows costs a
# few times one at 256; on a CPU the cost grows with the rows), and the updates per vector
# step follow from the replay ratio. One env keeps the base preset (one update per step).
# Measured with benchmarks/parallel_envs.py; docs/regime.md has the results.
MANY_ENVS: dict[str, Any] = {
    "replay_ratio": 32,
    "batch_per_env": 16,
    "batch_min": 256,
    "batch_max": {"cpu": 2048, "cuda": 16_384},
    "grad_steps": {"cpu": 10_000, "cuda": 100_000},
    "brn_warmup_share": 0.1,
    "alpha_init": 0.1,
    "start_batches": 4,  # uniform random actions until the buffer holds this many batches
    "every_vector_steps": {"log_every": 25, "eval_every": 250, "checkpoint_every": 1250},
    # GPU sizes: the paper's 2048-wide critics cost 4x at 16k rows for no measured gain;
    # buffers sized for a 24 GB card (docs/regime.md), humanoid's 2 kB transitions need less.
    "cuda_critic_hidden": [1024, 1024],
    "cuda_max_size": {"default": 10_000_000, "humanoid": 4_000_000},
}


def many_envs(num_envs: int, cuda: bool, env: str, total_steps: int | None = None,
              iters: int | None = None, every: int | None = None) -> dict[str, Any]:
    """The overrides of the many-env regime for `num_envs` on this device (see MANY_ENVS).

    `total_steps`, `iters` (training_iter) and `every` (training_frequency), when the user gave
    them, fix the run's length and schedule; the BRN warmup follows the gradient steps they make.
    """
    if num_envs <= 1:
        return {}
    rule, device = MANY_ENVS, "cuda" if cuda else "cpu"
    batch = min(max(rule["batch_min"], rule["batch_per_env"] * num_envs), rule["batch_max"][device])
    per_vector_step = rule["replay_ratio"] * num_envs / batch
    rule_iters, rule_every = (round(per_vector_step), 1) if per_vector_step >= 1 else (1, round(1 / per_vector_step))
    iters, every = iters or rule_iters, every or rule_every
    start = max(5000, rule["start_batches"] * batch)
    if total_steps is None:
        total_steps = start + rule["grad_steps"][device] * every // iters * num_envs
    grad_steps = gradient_steps(total_steps, start, num_envs, every, iters)
    out: dict[str, Any] = {
        "agent": {
            "algorithm": {"training_iter": iters, "training_frequency": every,
                          "alpha_init": rule["alpha_init"], "training_start_step": start},
            "memory": {"batch_size": batch},
            "critic_net": {"batch_renorm": {"warmup_steps": int(rule["brn_warmup_share"] * grad_steps)}},
        },
        "run": {"total_steps": total_steps,
                **{field: n * num_envs for field, n in rule["every_vector_steps"].items()}},
    }
    if cuda:
        sizes = rule["cuda_max_size"]
        out["agent"]["critic_net"]["hidden"] = list(rule["cuda_critic_hidden"])
        out["agent"]["memory"]["max_size"] = sizes.get(env, sizes["default"])
    return out


def gradient_steps(total_steps: int, start: int, num_envs: int, frequency: int, iters: int) -> int:
    """Gradient steps a run makes: updates begin after `start` env steps of random actions."""
    return max(total_steps - start, 0) // num_envs // frequency * iters


def describe_regime(cfg: Config) -> str:
    """The settings that depend on num_envs, as the resolved config has them (one line)."""
    alg, n = cfg.agent.algorithm, cfg.env.num_envs
    batch = cfg.agent.memory.batch_size
    ratio = batch * alg.training_iter / (n * alg.training_frequency)
    updates = (f"{alg.training_iter} update(s) per vector step" if alg.training_frequency == 1
               else f"1 update per {alg.training_frequency} vector steps")
    grads = gradient_steps(cfg.run.total_steps, alg.training_start_step, n, alg.training_frequency,
                           alg.training_iter)
    every = ", ".join(f"{name} {getattr(cfg.run, name + '_every') / n:g}"
                      for name in ("eval", "log", "checkpoint"))
    return (f"regime: {n} envs, batch {batch}, {updates}, replay ratio {ratio:g}, "
            f"~{grads} gradient steps, BRN warmup {cfg.agent.critic_net.batch_renorm.warmup_steps} "
            f"gradient steps, α0 {alg.alpha_init:g}; every N vector steps: {every}")


def resolve_preset(name: str, cuda_available: bool) -> str:
    """`auto` is `paper` on CUDA and `cpu` elsewhere, plus the many-env regime (build_config)."""
    if name == "auto":
        return "paper" if cuda_available else "cpu"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: auto, {', '.join(PRESETS)}")
    return name


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; override wins, nested dicts merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(tree: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `dotted.path=value` (value parsed as YAML) to a nested dict."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise ConfigError(f"--set expects dotted.path=value, got {assignment!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {path}: value {raw!r} is not valid YAML ({exc})") from None
    return set_path(tree, path, value)


def set_path(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`tree` with the field at `dotted.path` set to an already-typed value."""
    *parents, leaf = path.split(".")
    override: dict[str, Any] = {leaf: value}
    for key in reversed(parents):
        override = {key: override}
    return merge(tree, override)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a (possibly partial) config file as a nested dict."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Written atomically: a kill mid-write must not leave a run that cannot be resumed."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def build_config(preset: str, cuda_available: bool, config_file: str | None = None,
                 overrides: list[str] = (), flags: dict[str, Any] | None = None,
                 tree: dict[str, Any] | None = None) -> tuple[Config, str]:
    """Preset (+ the many-env regime under `auto`) < --config file, then `tree` (a nested, partial
    dict: the Python API's config) < flags (dotted path → value) < --set. Returns the config and
    the preset's name."""
    chosen = resolve_preset(preset, cuda_available)
    explicit: dict[str, Any] = load_yaml(config_file) if config_file is not None else {}
    explicit = merge(explicit, tree or {})
    for path, value in (flags or {}).items():
        explicit = set_path(explicit, path, value)
    for assignment in overrides:
        explicit = set_dotted(explicit, assignment)
    base = merge(to_dict(Config()), PRESETS[chosen])
    if preset == "auto":
        given = merge(base, explicit)
        total, iters, every = (_given_int(explicit, path) for path in (
            "run.total_steps", "agent.algorithm.training_iter", "agent.algorithm.training_frequency"))
        cuda = cuda_available and given["run"]["device"] != "cpu"
        base = merge(base, many_envs(_int(given["env"]["num_envs"], "env.num_envs"), cuda,
                                     str(given["env"]["name"]), total, iters, every))
    return from_dict(merge(base, explicit)), chosen


def _int(value: Any, path: str) -> int:
    return coerce(int, value, path)


def _given_int(tree: dict[str, Any], path: str) -> int | None:
    """The int the user gave at `dotted.path` of `tree`, or None where they gave none."""
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return _int(node, path)
