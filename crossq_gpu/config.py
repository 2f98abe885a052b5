"""The configuration schema: one typed dataclass per YAML section, checked on the way in.

One YAML document (the README's Configuration) maps onto `Config`. Every field has a default
(the paper's value) and a docstring; an unknown key or a wrong type anywhere is a
`ConfigError` that names its dotted path. Where a run's values come from (presets, files,
flags) is `configure.py`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending field."""


@dataclass
class EnvConfig:
    name: str = "ant"
    """`ant`, `halfcheetah`, … (Brax), `gym:ID` or `gym:package/ID` (Gymnasium), `playground:NAME`,
    or `package.module:factory` (your own env)."""
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
    """Importance-sampling exponent reached after beta_steps (1: full correction of the sampling bias)."""
    beta_steps: int = 100_000
    """Gradient steps over which beta anneals linearly."""
    eps: float = 1e-6
    """Added to |δ| so that no transition's priority is 0 (it would never be sampled again)."""


@dataclass
class MemoryConfig:
    name: Literal["Replay", "PrioritizedReplay"] = "Replay"
    """Replay: uniform sampling. PrioritizedReplay: proportional to the TD error (the prioritized settings)."""
    batch_size: int = 256
    """Transitions per gradient step (per rank under torchrun); BRN takes its batch statistics over them."""
    max_size: int = 1_000_000
    """Transitions held, counted over all envs."""
    prioritized: PrioritizedConfig = field(default_factory=PrioritizedConfig)
    """Used only by PrioritizedReplay."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Adam's learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    """Adam's (β1, β2); the paper's β1 = 0.5 keeps less momentum than Adam's default 0.9."""


@dataclass
class AlgorithmConfig:
    name: Literal["CrossQ", "SAC"] = "CrossQ"
    """CrossQ: BRN critics, no target networks. SAC: the baseline, with target critics and no BRN."""
    action_pdtype: Literal["auto", "Normal", "Categorical"] = "auto"
    """The policy's distribution, which the env's action space decides (auto): Normal, a tanh-squashed
    Gaussian, for continuous actions; Categorical for discrete ones. A value the env contradicts is an error."""
    gamma: float = 0.99
    """Discount factor per env step, in (0, 1]."""
    n_step: int = 1
    """Env steps per TD target: r_t + … + γ^(n−1) r_(t+n−1) + γ^n V(s_(t+n)), cut short at an
    episode's end. More than 1 passes reward back faster per gradient step, at the price of a
    bias: the steps after the first were taken by an older policy."""
    training_frequency: int = 1
    """Env (vector) steps between updates."""
    training_iter: int = 1
    """Gradient steps per update (the update-to-data ratio per vector step)."""
    training_start_step: int = 5000
    """Env steps (all envs counted) of uniform random actions before learning starts."""
    policy_delay: int = 3
    """Actor and α are updated every policy_delay gradient steps."""
    alpha_init: float = 1.0
    """Initial entropy temperature α (> 0); log α is learned from there."""
    target_entropy: float | Literal["auto"] = "auto"
    """auto: −|A| for continuous actions, 0.89·log|A| for discrete ones."""
    alpha_optim: OptimConfig = field(default_factory=OptimConfig)
    """Adam for log α."""
    tau: float = 0.005
    """SAC only: Polyak rate of the target critics (CrossQ has no targets)."""


@dataclass
class ActorNetConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the actor's hidden layers."""
    activation: Literal["relu", "tanh", "elu"] = "relu"
    """Nonlinearity after each hidden layer of the actor."""
    batch_renorm: bool = False
    """Add BRN (critic_net.batch_renorm settings) after each hidden layer of the actor."""
    log_std_min: float = -20.0
    """Lower clip of the Gaussian's log σ (before the tanh squashing)."""
    log_std_max: float = 2.0
    """Upper clip of the Gaussian's log σ."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Adam for the actor."""


@dataclass
class BatchRenormConfig:
    momentum: float = 0.01
    """Weight of each new batch in the running mean and variance, in (0, 1] (torch.nn.BatchNorm's convention)."""
    eps: float = 1e-3
    """Added to the variances before the square root."""
    r_max: float = 3.0
    """Clip of the scale correction r = σ_batch / σ_running to [1/r_max, r_max] (>= 1)."""
    d_max: float = 5.0
    """Clip of the shift correction d = (μ_batch − μ_running) / σ_running to [−d_max, d_max], in running σ."""
    warmup_steps: int = 100_000
    """Steps of plain batch norm (r = 1, d = 0) before renormalisation starts."""
    impl: Literal["auto", "torch", "torch_fast", "triton"] = "auto"
    """auto: Triton kernel on CUDA tensors, torch_fast (hand-written backward) elsewhere;
    torch: the composed reference."""


@dataclass
class CriticNetConfig:
    hidden: list[int] = field(default_factory=lambda: [2048, 2048])
    """Widths of each critic's hidden layers (the paper's are 2048 wide)."""
    n_critics: int = 2
    """Critics in the ensemble; the TD target takes their minimum."""
    activation: Literal["relu", "tanh", "elu"] = "relu"
    """Nonlinearity after each hidden layer of the critics."""
    brn_order: Literal["post_activation", "pre_activation"] = "post_activation"
    """post_activation: Linear → act → BRN (paper). pre_activation: Linear → BRN → act."""
    input_brn: bool = True
    """BRN on the critic input (paper). Ignored by SAC, whose critics have no BRN."""
    weight_norm: bool = False
    """CrossQ+WN: after each critic step, project every hidden unit's incoming weights and bias
    back to their initial expected norm. The BRN after each layer makes the output blind to that
    norm, so Adam's steps keep their relative size instead of shrinking as the weights grow.
    Needs ReLU or pre_activation (else the projection changes the function); ignored by SAC."""
    batch_renorm: BatchRenormConfig = field(default_factory=BatchRenormConfig)
    """BRN settings of the critics (CrossQ), and of the actor when net.batch_renorm is on."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Adam for the critics."""


@dataclass
class AgentConfig:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """The learning rule: CrossQ or SAC, discount, update schedule, entropy temperature."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The replay buffer and the batch drawn from it."""
    net: ActorNetConfig = field(default_factory=ActorNetConfig)
    """The actor (policy) network."""
    critic_net: CriticNetConfig = field(default_factory=CriticNetConfig)
    """The critic ensemble."""


@dataclass
class RunConfig:
    total_steps: int = 1_000_000
    """Env steps, all envs counted; an absolute total, also on --resume."""
    seed: int = 0
    """Seeds torch, the envs and the evaluations; rank r of a torchrun job uses seed + r."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when torch sees a GPU, else the CPU."""
    eval_every: int = 10_000
    """Env steps between deterministic evaluations (0 disables)."""
    eval_episodes: int = 10
    """Episodes per evaluation, one in each env of a separate copy of the env."""
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
    """What is trained on."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """What learns, and how."""
    run: RunConfig = field(default_factory=RunConfig)
    """How long, where, how often to log, evaluate and checkpoint."""


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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
        kwargs[name] = coerce(hints[name], value, sub)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, path: str) -> Any:
    """`value` as a field of type `tp` holds it (YAML reads 1e6 as a string); else a ConfigError naming `path`."""
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
                return coerce(option, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
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
        (cfg.agent.algorithm.n_step >= 1, "agent.algorithm.n_step must be >= 1"),
        (cfg.agent.algorithm.alpha_init > 0, "agent.algorithm.alpha_init must be > 0"),
        (0.0 < cfg.agent.algorithm.tau <= 1.0, "agent.algorithm.tau must be in (0, 1]"),
        (cfg.agent.critic_net.n_critics >= 1, "agent.critic_net.n_critics must be >= 1"),
        (all(h >= 1 for h in cfg.agent.critic_net.hidden), "agent.critic_net.hidden sizes must be >= 1"),
        (all(h >= 1 for h in cfg.agent.net.hidden), "agent.net.hidden sizes must be >= 1"),
        (0.0 < cfg.agent.critic_net.batch_renorm.momentum <= 1.0,
         "agent.critic_net.batch_renorm.momentum must be in (0, 1] (0 freezes the statistics)"),
        (cfg.agent.critic_net.batch_renorm.r_max >= 1.0, "agent.critic_net.batch_renorm.r_max must be >= 1"),
        (cfg.agent.critic_net.batch_renorm.d_max >= 0.0, "agent.critic_net.batch_renorm.d_max must be >= 0"),
        (not cfg.agent.critic_net.weight_norm or cfg.agent.critic_net.activation == "relu"
         or cfg.agent.critic_net.brn_order == "pre_activation",
         "agent.critic_net.weight_norm needs activation relu or brn_order pre_activation: only then is "
         "each layer's output blind to its weights' norm"),
        (cfg.run.total_steps >= 1, "run.total_steps must be >= 1"),
        (cfg.run.log_every >= 1, "run.log_every must be >= 1"),
        (cfg.run.eval_every >= 0, "run.eval_every must be >= 0"),
        (cfg.run.eval_episodes >= 1, "run.eval_episodes must be >= 1"),
        (cfg.run.checkpoint_every >= 0, "run.checkpoint_every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def field_info(path: str) -> tuple[Any, str]:
    """The type and the docstring of the field at `dotted.path`, so that the CLI's flags take
    their type, choices and help from the one place each field is described."""
    owner, tp = None, Config
    for name in path.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if name not in hints:
            raise ConfigError(f"no config field {path}")
        owner, tp = tp, hints[name]
    return tp, _docstrings()[owner.__name__].get(name, "")


@functools.cache
def _docstrings() -> dict[str, dict[str, str]]:
    """Class name → field → the string under the field: attribute docstrings live only in the source."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(inspect.getsource(sys.modules[__name__])).body:
        if isinstance(node, ast.ClassDef):
            docs[node.name] = {
                stmt.target.id: inspect.cleandoc(doc.value.value)
                for stmt, doc in zip(node.body, node.body[1:])
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)}
    return docs
