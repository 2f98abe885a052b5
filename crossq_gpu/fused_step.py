"""The whole gradient step as one compiled program: sampling, losses, gradients, Adam, all in it.

`Update` with `run.compile` and `run.fused_step` runs this instead of its step of separately
compiled losses around eager backward passes and optimizer calls. The program does what
`Update._step` does, in the same order: sample, critic loss, its gradient (`torch.autograd.grad`,
traced into the program), the gradient mean over data-parallel ranks, the critic's Adam step,
its weight normalisation (CrossQ+WN), the priority update, SAC's Polyak step and, on policy
steps, the actor and α losses, their gradient and their Adam steps. One
`torch.compile(fullgraph=True)` program per variant (with or without the actor step) replaces
~10 Python-level calls into the dispatcher, the autograd engine and three optimizers, and lets
Inductor fuse across what were their boundaries (the backward's last kernels with Adam's, the
BRN statistics with the loss). On CUDA, capturing this program as a CUDA graph captures its fused kernels.

The Adam step is `adam_`, a functional Adam on the optimizers' own state tensors (so
checkpoints, `Update.state_tensors` and the eager path all see one state). Sampling runs
inside the program for the device replay buffers; any other buffer object (a stand-in that
hands over given batches) is sampled outside and its batch passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from crossq_gpu import losses
from crossq_gpu.buffer import Batch, ReplayBuffer
from crossq_gpu.kernels.reference import gradients_traced_inline

if TYPE_CHECKING:
    from crossq_gpu.update import Update

Metrics = dict[str, Tensor]


def adam_(opt: torch.optim.Adam, params: list[Tensor], grads: list[Tensor]) -> None:
    """One Adam step of `params` on `opt`'s state, with the arithmetic of torch's fused Adam.

    m ← lerp(m, g, 1 − β₁); v ← β₂ v + (1 − β₂) g²; p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε),
    every step count t a tensor (no host read), so the step traces into a compiled program.
    """
    group = opt.param_groups[0]
    beta1, beta2 = group["betas"]
    states = [opt.state[p] for p in params]
    exp_avg = [s["exp_avg"] for s in states]
    exp_avg_sq = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        step_size = [group["lr"] / (1 - beta1 ** t) for t in steps]
        bias2_sqrt = [(1 - beta2 ** t).sqrt() for t in steps]
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(exp_avg_sq), bias2_sqrt), group["eps"])
        torch._foreach_sub_(params, torch._foreach_div(torch._foreach_mul(exp_avg, step_size), denom))


class FusedStep:
    """`update`'s gradient step compiled whole, one program per variant; call it with `actor_step`."""

    def __init__(self, update: Update) -> None:
        self.update = update
        self._program = torch.compile(self._step, fullgraph=True)
        self._traced: set[tuple[bool, bool]] = set()

    def __call__(self, actor_step: bool) -> Metrics:
        u = self.update
        batch = None if isinstance(u.buffer, ReplayBuffer) else u.buffer.sample(u.batch_size)
        variant = (actor_step, batch is None)
        if variant in self._traced:
            # Dynamo's guards re-check, on every call, each module attribute, parameter, optimizer
            # state and hyperparameter the program read when traced; none of them changes after
            # the Update is built, so only the guards that tell the variants apart run.
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._program(actor_step, batch)
        self._traced.add(variant)
        # Tracing torch.autograd.grad is opt-in; only the trace needs the flag. The gradients are
        # then computed inside the program, so the BRN statistics need no protective copies.
        with torch._dynamo.config.patch(trace_autograd_ops=True), gradients_traced_inline():
            return self._program(actor_step, batch)

    def _step(self, actor_step: bool, batch: Batch | None) -> Metrics:
        u = self.update
        if batch is None:
            batch = u.buffer.sample(u.batch_size)
        with u.autocast:
            loss, td_abs, metrics = u.critic_losses(batch)
        grads = u.ranks.mean_over_ranks(torch.autograd.grad(loss, u.critic_params))
        adam_(u.critic_opt, u.critic_params, grads)
        if u.weight_norm:
            u.agent.critic.mlp.project_weights_()
        if u.prioritized:
            u.buffer.update_priorities(batch.indices, td_abs)
        if u.polyak_pairs is not None:
            losses.polyak_(*u.polyak_pairs, u.tau)
        if actor_step:
            with u.autocast:
                policy_loss, policy_metrics = u.policy_losses(batch)
            # As in the eager step: the gradient flows through the critics, only the actor and log α take it.
            grads = u.ranks.mean_over_ranks(torch.autograd.grad(policy_loss, u.actor_params))
            adam_(u.actor_opt, u.actor_params[:-1], grads[:-1])
            adam_(u.alpha_opt, u.actor_params[-1:], grads[-1:])
            metrics = {**metrics, **policy_metrics}
        return metrics
