"""The configuration tree: typed dataclasses, presets, YAML load/save and `--set` overrides.

One YAML document (the README's Configuration) maps onto `Config`. Every field has a default
from the `paper` preset; presets are dictionaries of overrides (data, not classes); an
unknown key anywhere is a `ConfigError` that names its dotted path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from crossq_gpu.atomic import atomic_write


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending field."""


@dataclass
class EnvConfig:
    name: str = "ant"
    """`ant`, `halfcheetah`, … (Brax), `gym:ID` (Gymnasium) or `playground:NAME`."""
    num_envs: int = 4096
    """Environments stepped together; one vector step adds num_envs transitions."""
    backend: str = "generalized"
    """Brax physics backend: generalized | mjx | spring | positional."""
    episode_length: int = 1000
    """Time limit for Brax envs (steps); reaching it is a truncation, not a termination."""


@dataclass
class PrioritizedConfig:
    alpha: float = 0.6
    """Priority exponent: P(i) ∝ (|δ_i| + eps)^alpha."""
    beta: float = 0.4
    """Initial importance-sampling exponent, annealed to beta_final."""
    beta_final: float = 1.0
    beta_steps: int = 100_000
    """Gradient steps over which beta anneals linearly."""
    eps: float = 1e-6


@dataclass
class MemoryConfig:
    name: Literal["Replay", "PrioritizedReplay"] = "Replay"
    batch_size: int = 256
    max_size: int = 1_000_000
    """Transitions held, counted over all envs."""
    prioritized: PrioritizedConfig = field(default_factory=PrioritizedConfig)
    """Used only by PrioritizedReplay."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])


@dataclass
class AlgorithmConfig:
    name: Literal["CrossQ", "SAC"] = "CrossQ"
    action_pdtype: Literal["Normal", "Categorical"] = "Normal"
    """Normal: tanh-squashed Gaussian (continuous). Categorical: discrete actions."""
    gamma: float = 0.99
    training_frequency: int = 1
    """Env (vector) steps between updates."""
    training_iter: int = 1
    """Gradient steps per update (the update-to-data ratio per vector step)."""
    training_start_step: int = 5000
    """Env steps (all envs counted) of uniform random actions before learning starts."""
    policy_delay: int = 3
    """Actor and α are updated every policy_delay gradient steps."""
    alpha_init: float = 1.0
    target_entropy: Union[float, Literal["auto"]] = "auto"
    """auto: −|A| for continuous actions, 0.89·log|A| for discrete ones."""
    alpha_optim: OptimConfig = field(default_factory=OptimConfig)
    tau: float = 0.005
    """SAC only: Polyak rate of the target critics (CrossQ has no targets)."""


@dataclass
class ActorNetConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: Literal["relu", "tanh", "elu"] = "relu"
    batch_renorm: bool = False
    """Add BRN (critic_net.batch_renorm settings) after each hidden layer of the actor."""
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class BatchRenormConfig:
    momentum: float = 0.01
    eps: float = 1e-3
    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 100_000
    """Steps of plain batch norm (r = 1, d = 0) before renormalisation starts."""
    impl: Literal["auto", "torch", "torch_fast", "triton"] = "auto"
    """auto: Triton kernel on CUDA tensors, torch_fast (hand-written backward) elsewhere;
    torch: the composed reference."""


@dataclass
class CriticNetConfig:
    hidden: list[int] = field(default_factory=lambda: [2048, 2048])
    n_critics: int = 2
    activation: Literal["relu", "tanh", "elu"] = "relu"
    brn_order: Literal["post_activation", "pre_activation"] = "post_activation"
    """post_activation: Linear → act → BRN (paper). pre_activation: Linear → BRN → act."""
    input_brn: bool = True
    """BRN on the critic input (paper). Ignored by SAC, whose critics have no BRN."""
    batch_renorm: BatchRenormConfig = field(default_factory=BatchRenormConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class AgentConfig:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    net: ActorNetConfig = field(default_factory=ActorNetConfig)
    critic_net: CriticNetConfig = field(default_factory=CriticNetConfig)


@dataclass
class RunConfig:
    total_steps: int = 1_000_000
    """Env steps, all envs counted; an absolute total, also on --resume."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = 10_000
    """Env steps between deterministic evaluations (0 disables)."""
    eval_episodes: int = 10
    log_every: int = 1000
    """Env steps between metric rows; the only place device metrics are read."""
    checkpoint_every: int = 50_000
    """Env steps between checkpoints (0: only at the end)."""
    compile: bool = True
    """torch.compile the update (both devices)."""
    fused_step: bool = True
    """With compile: the whole gradient step (sampling, losses, gradients, Adam) as one compiled
    program, instead of compiled losses around eager backward passes and optimizer calls."""
    cuda_graphs: bool = True
    """Capture the update and the acting step as CUDA graphs (CUDA only)."""
    autocast: Literal["none", "bf16"] = "none"
    """bf16 autocast for the Linear layers' matmuls; BRN and the Q head (a dot product) run in float32."""
    overlap: bool = False
    """Dispatch each env step before that step's updates and store its transition after them,
    so physics and updates run at once (Brax/MJX envs); the updates then miss the newest
    vector step. Off by default: docs/regime.md has what it measured."""
    save_buffer: bool = False
    """Store the replay buffer in checkpoints (large)."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    run: RunConfig = field(default_factory=RunConfig)


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


def many_envs(num_envs: int, cuda: bool, env: str, total_steps: int | None = None) -> dict[str, Any]:
    """The overrides of the many-env regime for `num_envs` on this device (see MANY_ENVS).

    `total_steps`, when the user gave it, fixes the run's length; the BRN warmup follows it.
    """
    if num_envs <= 1:
        return {}
    rule, device = MANY_ENVS, "cuda" if cuda else "cpu"
    batch = min(max(rule["batch_min"], rule["batch_per_env"] * num_envs), rule["batch_max"][device])
    per_vector_step = rule["replay_ratio"] * num_envs / batch
    iters, every = (round(per_vector_step), 1) if per_vector_step >= 1 else (1, round(1 / per_vector_step))
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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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


def from_dict(data: dict[str, Any]) -> Config:
    """Build a validated `Config`; unknown keys and wrong types name their dotted path."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config field {where}{unknown[0]} (known under "
                          f"{path or 'the top level'}: {', '.join(sorted(names))})")
    default = cls()
    kwargs = {}
    for name in names:
        sub = f"{path}.{name}" if path else name
        value = data.get(name, getattr(default, name))
        kwargs[name] = _coerce(hints[name], value, sub)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp in (int, float) and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e6 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # YAML reads 1e6 as a float
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def validate(cfg: Config) -> None:
    """Range checks that types cannot express; each failure names its field."""
    checks = [
        (cfg.env.num_envs >= 1, "env.num_envs must be >= 1"),
        (cfg.env.episode_length >= 1, "env.episode_length must be >= 1"),
        (cfg.agent.memory.batch_size >= 2, "agent.memory.batch_size must be >= 2 (BRN needs 2 rows)"),
        (cfg.agent.memory.max_size >= cfg.env.num_envs,
         "agent.memory.max_size must be >= env.num_envs (one vector step)"),
        (0.0 < cfg.agent.algorithm.gamma <= 1.0, "agent.algorithm.gamma must be in (0, 1]"),
        (cfg.agent.algorithm.training_frequency >= 1, "agent.algorithm.training_frequency must be >= 1"),
        (cfg.agent.algorithm.training_iter >= 1, "agent.algorithm.training_iter must be >= 1"),
        (cfg.agent.algorithm.training_start_step >= 0, "agent.algorithm.training_start_step must be >= 0"),
        (cfg.agent.algorithm.policy_delay >= 1, "agent.algorithm.policy_delay must be >= 1"),
        (cfg.agent.algorithm.alpha_init > 0, "agent.algorithm.alpha_init must be > 0"),
        (0.0 < cfg.agent.algorithm.tau <= 1.0, "agent.algorithm.tau must be in (0, 1]"),
        (cfg.agent.critic_net.n_critics >= 1, "agent.critic_net.n_critics must be >= 1"),
        (all(h >= 1 for h in cfg.agent.critic_net.hidden), "agent.critic_net.hidden sizes must be >= 1"),
        (all(h >= 1 for h in cfg.agent.net.hidden), "agent.net.hidden sizes must be >= 1"),
        (0.0 < cfg.agent.critic_net.batch_renorm.momentum <= 1.0,
         "agent.critic_net.batch_renorm.momentum must be in (0, 1] (0 freezes the statistics)"),
        (cfg.agent.critic_net.batch_renorm.r_max >= 1.0, "agent.critic_net.batch_renorm.r_max must be >= 1"),
        (cfg.agent.critic_net.batch_renorm.d_max >= 0.0, "agent.critic_net.batch_renorm.d_max must be >= 0"),
        (cfg.run.total_steps >= 1, "run.total_steps must be >= 1"),
        (cfg.run.log_every >= 1, "run.log_every must be >= 1"),
        (cfg.run.eval_every >= 0, "run.eval_every must be >= 0"),
        (cfg.run.eval_episodes >= 1, "run.eval_episodes must be >= 1"),
        (cfg.run.checkpoint_every >= 0, "run.checkpoint_every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


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
                 overrides: list[str] = (), flags: dict[str, Any] | None = None) -> tuple[Config, str]:
    """Preset (+ the many-env regime under `auto`) < --config file < flags (dotted path → value)
    < --set. Returns the config and the preset's name."""
    chosen = resolve_preset(preset, cuda_available)
    explicit: dict[str, Any] = load_yaml(config_file) if config_file is not None else {}
    for path, value in (flags or {}).items():
        explicit = set_path(explicit, path, value)
    for assignment in overrides:
        explicit = set_dotted(explicit, assignment)
    tree = merge(to_dict(Config()), PRESETS[chosen])
    if preset == "auto":
        given = merge(tree, explicit)
        run = explicit.get("run", {}) if isinstance(explicit.get("run"), dict) else {}
        cuda = cuda_available and given["run"]["device"] != "cpu"
        tree = merge(tree, many_envs(_int(given["env"]["num_envs"], "env.num_envs"), cuda,
                                     str(given["env"]["name"]), run.get("total_steps")))
    return from_dict(merge(tree, explicit)), chosen


def _int(value: Any, path: str) -> int:
    return _coerce(int, value, path)
