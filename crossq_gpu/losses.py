"""The SAC-family losses as pure functions of explicit tensors.

CrossQ and SAC share all of these; they differ only in where Q(s', a') comes from (the
joint critic forward vs target critics), which is `update.py`'s business. Shapes: B batch
rows, n critics, A discrete actions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_value(next_q: Tensor, next_log_prob: Tensor, alpha: Tensor,
               next_probs: Tensor | None = None) -> Tensor:
    """V(s') = min_j Q_j(s', a') − α log π(a'|s'), [B].

    Continuous: next_q [n, B] at a sampled a', next_log_prob [B].
    Discrete: next_q [n, B, A], next_log_prob and next_probs [B, A]; the expectation over
    the policy replaces sampling.
    """
    v = next_q.min(dim=0).values - alpha * next_log_prob
    return v if next_probs is None else (next_probs * v).sum(-1)


def td_target(reward: Tensor, terminated: Tensor, next_value: Tensor, discount: float | Tensor) -> Tensor:
    """y = r + γ (1 − terminated) V(s'). Truncated transitions are not terminal: they bootstrap.

    For an n-step return, r is the discounted reward sum and `discount` is γ^m per row [B].
    """
    return (reward + discount * (1.0 - terminated) * next_value).detach()


def critic_loss(q: Tensor, target: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Σ_j mean((Q_j − y)²), importance-weighted for prioritized replay.

    Returns the loss and |δ| averaged over critics [B], the priority signal.
    """
    td = q - target  # [n, B]
    sq = td.pow(2)
    if weights is not None:
        sq = sq * weights
    return sq.mean(dim=1).sum(), td.detach().abs().mean(dim=0)


def actor_loss(log_prob: Tensor, q: Tensor, alpha: Tensor, probs: Tensor | None = None) -> Tensor:
    """mean(α log π(ã|s) − min_j Q_j(s, ã)); discrete: the same under the policy's expectation."""
    per_action = alpha * log_prob - q.min(dim=0).values
    per_sample = per_action if probs is None else (probs * per_action).sum(-1)
    return per_sample.mean()


def alpha_loss(log_alpha: Tensor, expected_log_prob: Tensor, target_entropy: float) -> Tensor:
    """−log α · (E log π + H̄), with the policy term detached, so only α learns from it."""
    return -(log_alpha * (expected_log_prob + target_entropy).detach()).mean()


def expected_log_prob(log_prob: Tensor, probs: Tensor | None = None) -> Tensor:
    """E_π[log π] per sample [B]: the sampled log-probability, or Σ_a π log π for discrete."""
    return log_prob if probs is None else (probs * log_prob).sum(-1)


def polyak_(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """target ← (1 − τ) target + τ online, in place, one fused op over all tensors."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)
