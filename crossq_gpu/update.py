"""One gradient step of CrossQ (or the SAC baseline), in the order of docs/design.md §1.

The losses are computed by two functions of an explicit batch (`critic_losses`,
`policy_losses`). With `run.compile` the whole step — sampling, losses, gradients, Adam —
runs as one compiled program per variant (with or without the actor step; `fused_step.py`);
with `run.fused_step` off only the two loss functions are compiled and backward and the
Adam steps run around them; eager runs everything uncompiled, the reference. Both compile
with `fullgraph=True`, which proves they contain no host sync and no graph break. On CUDA
the step that runs, sampling included, is captured as one CUDA graph per variant.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import Tensor

from crossq_gpu import losses
from crossq_gpu.buffer import Batch, PrioritizedReplay, ReplayBuffer
from crossq_gpu.capture import GraphedCall
from crossq_gpu.config import Config, OptimConfig
from crossq_gpu.distributed import Ranks
from crossq_gpu.fused_step import FusedStep
from crossq_gpu.networks import Agent

Metrics = dict[str, Tensor]


def set_matmul_precision(device: torch.device) -> None:
    """TF32 matmuls on CUDA (BRN statistics stay float32): the learner and the benchmarks call
    this, so a benchmark times the GEMMs the learner runs."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def make_adam(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, device: torch.device,
              captured: bool) -> torch.optim.Adam:
    """Adam with its state created up front (so checkpoints and CUDA graphs see fixed tensors).

    Fused Adam (fused kernels instead of ~10 torch ops per parameter, the step count on the
    device, no `.item()`) unless `captured` (the step replays as a CUDA graph): then capturable
    foreach Adam, whose every op is graph-safe.
    """
    params = list(params)
    graph_safe = captured and device.type == "cuda"
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), capturable=graph_safe,
                           foreach=graph_safe or None, fused=not graph_safe or None)
    for p in params:  # a zero-gradient step allocates exp_avg/exp_avg_sq/step and moves nothing
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in params:
        p.grad = None
        opt.state[p]["step"].zero_()
    return opt


def _target_entropy(value: float | str, agent: Agent) -> float:
    """H̄ for `agent`'s action space: the configured value, or under `auto` −|A| for continuous
    actions and 0.89·log|A| for discrete ones (discrete SAC)."""
    if value != "auto":
        return float(value)
    return 0.89 * math.log(agent.num_actions) if agent.discrete else -float(agent.act_dim)


class Update:
    """Owns the optimizers and performs gradient steps on `agent` from `buffer`.

    Under data parallelism (`ranks.world` > 1) the gradients are averaged over the ranks
    between each backward and its optimizer step, so every rank takes the same step.
    """

    def __init__(self, agent: Agent, buffer: ReplayBuffer, cfg: Config, device: torch.device,
                 ranks: Ranks = Ranks()) -> None:
        alg = cfg.agent.algorithm
        self.agent, self.buffer = agent, buffer
        self.crossq = alg.name == "CrossQ"
        self.gamma, self.tau, self.policy_delay = alg.gamma, alg.tau, alg.policy_delay
        self.batch_size = cfg.agent.memory.batch_size
        self.target_entropy = _target_entropy(alg.target_entropy, agent)
        self.prioritized = isinstance(buffer, PrioritizedReplay)
        self.weight_norm = self.crossq and cfg.agent.critic_net.weight_norm
        self.critic_params = list(agent.critic.parameters())
        self.actor_params = list(agent.actor.parameters()) + [agent.log_alpha]
        self._graphed = cfg.run.cuda_graphs and device.type == "cuda"
        self.critic_opt = make_adam(self.critic_params, cfg.agent.critic_net.optim, device, self._graphed)
        self.actor_opt = make_adam(agent.actor.parameters(), cfg.agent.net.optim, device, self._graphed)
        self.alpha_opt = make_adam([agent.log_alpha], alg.alpha_optim, device, self._graphed)
        self.ranks = ranks
        self.polyak_pairs = (None if agent.critic_target is None else
                             (list(agent.critic_target.parameters()), self.critic_params))
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if cfg.run.autocast == "bf16" else contextlib.nullcontext())
        self._fused = FusedStep(self) if cfg.run.compile and cfg.run.fused_step else None
        if cfg.run.compile and self._fused is None:
            self.critic_losses = torch.compile(self.critic_losses, fullgraph=True)
            self.policy_losses = torch.compile(self.policy_losses, fullgraph=True)
        self._graphs: dict[bool, GraphedCall] = {}
        self.grad_steps = 0

    # --- the algorithm ----------------------------------------------------------------

    def critic_losses(self, batch: Batch) -> tuple[Tensor, Tensor, Metrics]:
        """Steps 2–5: a' ~ π(s'), Q on (s,a) and (s',a'), the TD target, the critic loss."""
        agent = self.agent
        discrete = agent.discrete
        with torch.no_grad():
            if discrete:
                next_probs, next_logp = agent.actor(batch.next_obs, training=False)
                next_action = None
            else:
                next_action, next_logp = agent.actor.sample(batch.next_obs, training=False)
                next_probs = None
        if self.crossq:
            # The CrossQ joint forward: one critic pass on 2B rows in train mode, so (s,a)
            # and (s',a') share batch statistics; the bootstrap comes from the same pass.
            both_obs = torch.cat([batch.obs, batch.next_obs])
            both_act = None if discrete else torch.cat([batch.action, next_action])
            q_all = agent.critic(both_obs, both_act, training=True)
            q, next_q = q_all.split(batch.obs.shape[0], dim=1)
            next_q = next_q.detach()
        else:
            q = agent.critic(batch.obs, None if discrete else batch.action, training=True)
            with torch.no_grad():
                next_q = agent.critic_target(batch.next_obs, next_action, training=False)
        if discrete:
            q = q.gather(-1, batch.action.view(1, -1, 1).expand(q.shape[0], -1, 1)).squeeze(-1)
        alpha = agent.log_alpha.detach().exp()
        next_value = losses.soft_value(next_q, next_logp, alpha, next_probs)
        discount = self.gamma if batch.discount is None else batch.discount
        target = losses.td_target(batch.reward, batch.terminated, next_value, discount)
        loss, td_abs = losses.critic_loss(q, target, batch.weights)
        return loss, td_abs, {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}

    def policy_losses(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Step 6: actor loss with the critics in eval mode, then the temperature loss."""
        agent = self.agent
        alpha = agent.log_alpha.detach().exp()
        if agent.discrete:
            probs, log_prob = agent.actor(batch.obs, training=True)
            q = agent.critic(batch.obs, None, training=False)
        else:
            action, log_prob = agent.actor.sample(batch.obs, training=True)
            probs = None
            q = agent.critic(batch.obs, action, training=False)
        actor_loss = losses.actor_loss(log_prob, q, alpha, probs)
        expected = losses.expected_log_prob(log_prob, probs)
        alpha_loss = losses.alpha_loss(agent.log_alpha, expected, self.target_entropy)
        metrics = {"actor_loss": actor_loss.detach(), "alpha": alpha, "entropy": -expected.detach().mean()}
        return actor_loss + alpha_loss, metrics

    # --- the step ---------------------------------------------------------------------

    def _step(self, actor_step: bool) -> Metrics:
        batch = self.buffer.sample(self.batch_size)
        with self.autocast:
            loss, td_abs, metrics = self.critic_losses(batch)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ranks.average_gradients_(self.critic_params)
        self.critic_opt.step()
        if self.weight_norm:
            self.agent.critic.mlp.project_weights_()
        if self.prioritized:
            self.buffer.update_priorities(batch.indices, td_abs)
        if self.polyak_pairs is not None:
            losses.polyak_(*self.polyak_pairs, self.tau)
        if actor_step:
            with self.autocast:
                policy_loss, policy_metrics = self.policy_losses(batch)
            self.actor_opt.zero_grad(set_to_none=True)
            self.alpha_opt.zero_grad(set_to_none=True)
            # Only the actor and log α receive this gradient; it flows through the critics
            # into ã, but the critic parameters are excluded.
            policy_loss.backward(inputs=self.actor_params)
            self.ranks.average_gradients_(self.actor_params)
            self.actor_opt.step()
            self.alpha_opt.step()
            metrics = {**metrics, **policy_metrics}
        return metrics

    def step(self) -> Metrics:
        """One gradient step; the actor and α move every policy_delay-th step."""
        self.grad_steps += 1
        actor_step = self.grad_steps % self.policy_delay == 0
        run = self._fused or self._step
        if not self._graphed:
            return run(actor_step)
        if actor_step not in self._graphs:
            self._graphs[actor_step] = GraphedCall(lambda: run(actor_step), self.state_tensors())
        return self._graphs[actor_step]()

    def state_tensors(self) -> list[Tensor]:
        """Every tensor a step mutates: restored after CUDA-graph warm-up so capture trains nothing."""
        tensors = list(self.agent.state_dict(keep_vars=True).values())
        for opt in (self.critic_opt, self.actor_opt, self.alpha_opt):
            tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
        return tensors + self.buffer.mutable_tensors()

    def state_dict(self) -> dict:
        return {"critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        for name in ("critic_opt", "actor_opt", "alpha_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.grad_steps = state["grad_steps"]
