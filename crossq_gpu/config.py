"""The configuration tree: typed dataclasses, presets, YAML load/save and `--set` overrides.

One YAML document of the shape in SPEC §1 maps onto `Config`. Every field has a default
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
    cuda_graphs: bool = True
    """Capture the update and the acting step as CUDA graphs (CUDA only)."""
    autocast: Literal["none", "bf16"] = "none"
    """bf16 autocast for the Linear layers' matmuls; BRN and the Q head (a dot product) run in float32."""
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


def _many_envs(env: str, critic_width: int, max_size: int, total_steps: int = 50_000_000) -> dict[str, Any]:
    """A `--num-envs 4096` preset for one consumer GPU (24 GB). Chosen by reasoning, not yet
    by a GPU benchmark; docs/presets.md has the arithmetic and what to confirm.

    4 updates of 16,384 per vector step of 4,096 transitions (each transition sampled ~16
    times); α starts at 0.1 because log α moves ~lr per α update and one update now comes
    per 1,024 transitions, not per one; critics narrower than the paper's 2048 so those 4
    updates cost about as much as the env step; run intervals in env steps scaled to 4,096.
    """
    return {
        "env": {"name": env, "num_envs": 4096},
        "agent": {
            "algorithm": {"training_iter": 4, "alpha_init": 0.1, "training_start_step": 65_536},
            "memory": {"batch_size": 16_384, "max_size": max_size},
            "critic_net": {"hidden": [critic_width, critic_width]},
        },
        "run": {"total_steps": total_steps, "eval_every": 1_000_000, "log_every": 100_000,
                "checkpoint_every": 5_000_000},
    }


# Buffer bytes = max_size · (2·obs + act + 2) · 4 (ReplayBuffer.nbytes), Brax obs/act dims:
#   env          obs  act  bytes/transition  max_size   buffer
#   ant           27    8               256    10 M     2.4 GiB
#   halfcheetah   17    6               168    10 M     1.6 GiB
#   hopper        11    3               108    10 M     1.0 GiB
#   walker2d      17    6               168    10 M     1.6 GiB
#   humanoid     244   17              2028     4 M     7.6 GiB
# Critic activations at batch 16,384 (32,768 rows, 2 critics, width 1024): ~8 live
# [2, 32768, 1024] float32 tensors = 2.0 GiB per step, ×3 for two captured graphs and the
# eager warm-up ≈ 6 GiB; networks + Adam < 0.1 GiB; Brax state and XLA ≈ 2–4 GiB.
# Humanoid, the largest: 7.6 + 6 + 4 ≈ 18 GiB of 24.
PRESETS.update({
    "ant-4096": _many_envs("ant", 1024, 10_000_000),
    "halfcheetah-4096": _many_envs("halfcheetah", 512, 10_000_000),
    "hopper-4096": _many_envs("hopper", 512, 10_000_000),
    "walker2d-4096": _many_envs("walker2d", 512, 10_000_000),
    "humanoid-4096": _many_envs("humanoid", 1024, 4_000_000, total_steps=100_000_000),
})


def resolve_preset(name: str, cuda_available: bool) -> str:
    """`auto` is `paper` on CUDA and `cpu` elsewhere (SPEC §1)."""
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
    """Preset < --config file < flags (dotted path → value) < --set. Returns the config and the preset."""
    chosen = resolve_preset(preset, cuda_available)
    tree = merge(to_dict(Config()), PRESETS[chosen])
    if config_file is not None:
        tree = merge(tree, load_yaml(config_file))
    for path, value in (flags or {}).items():
        tree = set_path(tree, path, value)
    for assignment in overrides:
        tree = set_dotted(tree, assignment)
    return from_dict(tree), chosen
