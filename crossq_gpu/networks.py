"""Actors and the critic ensemble.

Every network is an `EnsembleMLP`: n independent MLPs whose Linear layers are one batched
matmul over stacked weights `[n, in, out]`, so the critics run as one module, not a
Python loop over critics (an actor is the case n = 1). BatchRenorm layers come from
`crossq_gpu.kernels`, with the adjacent ReLU fused into them. Train/eval mode is an
explicit `training` argument at every call site, so the update never flips module state.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossq_gpu.config import ActorNetConfig, BatchRenormConfig, Config, CriticNetConfig
from crossq_gpu.kernels import BatchRenorm1d, BrnParams

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "elu": F.elu}
# The expected norm of a hidden unit's incoming weights at initialisation, uniform in ±1/√in:
# E|w|² = in · (1/in) / 3. Weight normalisation keeps them there, so Adam's first steps move
# the network as they would without it.
INIT_NORM = 1 / math.sqrt(3)


class StackedLinear(nn.Module):
    """n independent Linear layers applied as one batched matmul: [n, B, in] -> [n, B, out]."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.shape[-1] == 1:
            # A Q head is one dot product per row. As a product and a sum it fuses with the
            # BRN before it; MKL's batched GEMM with N = 1 costs ~5x more on a CPU (~150 us
            # at [2, 512, 256]), and under torch.compile it moved the CrossQ update ~+5 %.
            return torch.sum(x * self.weight.transpose(-1, -2), dim=-1, keepdim=True) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """n MLPs with optional BatchRenorm, in either of the two CrossQ layouts (docs/design.md §1).

    post_activation (paper): [BRN(input)] → (Linear → act → BRN) × L → Linear.
    pre_activation (SLM-Lab): [BRN(input)] → (Linear → BRN → act) × L → Linear.
    With ReLU the activation is fused into the BRN kernel on whichever side it sits.
    """

    def __init__(self, n: int, in_features: int, out_features: int, hidden: list[int],
                 activation: str, brn: BatchRenormConfig | None = None,
                 brn_order: str = "post_activation", input_brn: bool = False) -> None:
        super().__init__()
        self.n = n
        self.activation = activation
        sizes = [in_features, *hidden]
        self.linears = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = StackedLinear(n, sizes[-1], out_features)
        fused = "input" if brn_order == "post_activation" else "output"
        self.fuse_relu = brn is not None and activation == "relu"
        relu_side = fused if self.fuse_relu else "none"
        self.input_norm = _brn(in_features, n, brn, "none") if brn is not None and input_brn else None
        self.norms = nn.ModuleList(_brn(h, n, brn, relu_side) for h in hidden) if brn is not None else None
        self.brn_order = brn_order

    def forward(self, x: Tensor, *, training: bool) -> Tensor:
        """x: [B, in] (shared by all n members) or [n, B, in]. Returns [n, B, out]."""
        if x.dim() == 2:
            x = x.expand(self.n, *x.shape)
        if self.input_norm is not None:
            x = self.input_norm(x, training=training)
        act = ACTIVATIONS[self.activation]
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if self.norms is None:
                x = act(x)
            elif self.fuse_relu:
                x = self.norms[i](x, training=training)
            elif self.brn_order == "post_activation":
                x = self.norms[i](act(x), training=training)
            else:
                x = act(self.norms[i](x, training=training))
        return self.head(x)

    @torch.no_grad()
    def project_weights_(self) -> None:
        """Weight normalisation by projection (CrossQ+WN): each hidden unit's incoming weights and
        bias, as one vector, back onto the sphere of radius INIT_NORM, and the running statistics
        of the BRN after it by the same factor. A BRN follows every hidden layer (through a ReLU
        or directly), so this leaves the network's output as it was, in train and eval mode, up
        to BRN's eps; only the size of the next optimizer steps relative to the weights changes."""
        for linear, norm in zip(self.linears, self.norms):
            scale = INIT_NORM / torch.sqrt(linear.weight.square().sum(1, keepdim=True) + linear.bias.square())
            linear.weight.mul_(scale)
            linear.bias.mul_(scale)
            scale = scale.view(norm.running_mean.shape)
            norm.running_mean.mul_(scale)
            norm.running_var.mul_(scale.square())


def _brn(features: int, n: int, cfg: BatchRenormConfig, relu: str) -> BatchRenorm1d:
    params = BrnParams(**{f.name: getattr(cfg, f.name) for f in fields(BrnParams)})
    return BatchRenorm1d(features, params, relu=relu, ensemble_size=n, impl=cfg.impl)


class CriticEnsemble(nn.Module):
    """n Q-functions as one module. Continuous: Q(s, a) -> [n, B]. Discrete: Q(s, ·) -> [n, B, A]."""

    def __init__(self, obs_dim: int, act_dim: int, num_actions: int | None, cfg: CriticNetConfig,
                 use_brn: bool) -> None:
        super().__init__()
        self.discrete = num_actions is not None
        in_features = obs_dim if self.discrete else obs_dim + act_dim
        out_features = num_actions if self.discrete else 1
        self.mlp = EnsembleMLP(cfg.n_critics, in_features, out_features, cfg.hidden, cfg.activation,
                               brn=cfg.batch_renorm if use_brn else None,
                               brn_order=cfg.brn_order, input_brn=cfg.input_brn)

    def forward(self, obs: Tensor, action: Tensor | None, *, training: bool) -> Tensor:
        x = obs if self.discrete else torch.cat([obs, action], dim=-1)
        q = self.mlp(x, training=training)
        return q if self.discrete else q.squeeze(-1)


class GaussianActor(nn.Module):
    """Tanh-squashed Gaussian policy with log σ clipped to [log_std_min, log_std_max]."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: ActorNetConfig,
                 brn: BatchRenormConfig | None) -> None:
        super().__init__()
        self.mlp = EnsembleMLP(1, obs_dim, 2 * act_dim, cfg.hidden, cfg.activation,
                               brn=brn if cfg.batch_renorm else None)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: Tensor, *, training: bool) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mlp(obs, training=training)[0].chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: Tensor, *, training: bool) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability [B]."""
        mean, log_std = self(obs, training=training)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / std).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(u)^2), written so it stays finite for large |u|.
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob

    def act(self, obs: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            return torch.tanh(self(obs, training=False)[0])
        return self.sample(obs, training=False)[0]


def gumbel_max_sample(log_probs: Tensor) -> Tensor:
    """One draw per row of a categorical [..., A] as argmax(log p + Gumbel noise).

    Unlike torch.multinomial, which checks its input with a host sync on CUDA, this is plain
    elementwise ops and an argmax: it runs inside a captured CUDA graph. u is kept above 0 so
    the noise stays finite.
    """
    u = torch.rand_like(log_probs).clamp_(min=torch.finfo(log_probs.dtype).tiny)
    return (log_probs - torch.log(-torch.log(u))).argmax(-1)


class CategoricalActor(nn.Module):
    """Discrete policy: logits over actions; the losses take expectations, not samples."""

    def __init__(self, obs_dim: int, num_actions: int, cfg: ActorNetConfig,
                 brn: BatchRenormConfig | None) -> None:
        super().__init__()
        self.mlp = EnsembleMLP(1, obs_dim, num_actions, cfg.hidden, cfg.activation,
                               brn=brn if cfg.batch_renorm else None)

    def forward(self, obs: Tensor, *, training: bool) -> tuple[Tensor, Tensor]:
        """Probabilities and log-probabilities, each [B, A]."""
        log_probs = F.log_softmax(self.mlp(obs, training=training)[0], dim=-1)
        return log_probs.exp(), log_probs

    def act(self, obs: Tensor, deterministic: bool) -> Tensor:
        _, log_probs = self(obs, training=False)
        if deterministic:
            return log_probs.argmax(-1)
        return gumbel_max_sample(log_probs)


def build_actor(obs_dim: int, act_dim: int | None, num_actions: int | None, cfg: ActorNetConfig,
                brn: BatchRenormConfig) -> GaussianActor | CategoricalActor:
    """The actor alone: what the Agent trains and what a loaded Policy runs."""
    if num_actions is not None:
        return CategoricalActor(obs_dim, num_actions, cfg, brn)
    return GaussianActor(obs_dim, act_dim, cfg, brn)


class Agent(nn.Module):
    """Everything that learns: actor, critics, SAC's target critics and log α."""

    def __init__(self, obs_dim: int, act_dim: int | None, num_actions: int | None,
                 actor_cfg: ActorNetConfig, critic_cfg: CriticNetConfig, algorithm: str,
                 alpha_init: float) -> None:
        super().__init__()
        self.act_dim, self.num_actions = act_dim, num_actions
        self.discrete = num_actions is not None
        self.actor = build_actor(obs_dim, act_dim, num_actions, actor_cfg, critic_cfg.batch_renorm)
        crossq = algorithm == "CrossQ"
        self.critic = CriticEnsemble(obs_dim, act_dim or 0, num_actions, critic_cfg, use_brn=crossq)
        self.critic_target = None
        if not crossq:
            self.critic_target = CriticEnsemble(obs_dim, act_dim or 0, num_actions, critic_cfg, use_brn=False)
            self.critic_target.load_state_dict(self.critic.state_dict())
            self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)))

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for a batch of observations: [N, act_dim] in [-1, 1], or [N] int64."""
        return self.actor.act(obs, deterministic)


def build_agent(cfg: Config, obs_dim: int, act_dim: int | None, num_actions: int | None) -> Agent:
    return Agent(obs_dim, act_dim, num_actions, cfg.agent.net, cfg.agent.critic_net,
                 cfg.agent.algorithm.name, cfg.agent.algorithm.alpha_init)
