"""The pure losses against numbers worked out by hand."""

import math

import torch

from crossq_gpu import losses


def test_truncated_transitions_bootstrap_terminated_do_not():
    reward = torch.tensor([1.0, 1.0, 1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])  # row 2 was truncated: stored as not terminal
    next_value = torch.tensor([10.0, 10.0, 10.0])
    y = losses.td_target(reward, terminated, next_value, discount=0.9)
    assert torch.allclose(y, torch.tensor([10.0, 1.0, 10.0]))
    assert not y.requires_grad


def test_n_step_targets_bootstrap_with_each_rows_own_discount():
    reward = torch.tensor([1.0 + 0.9 * 2.0, 3.0])  # row 0: two steps summed; row 1: one step
    y = losses.td_target(reward, torch.zeros(2), torch.tensor([10.0, 10.0]), torch.tensor([0.81, 0.9]))
    assert torch.allclose(y, torch.tensor([2.8 + 8.1, 3.0 + 9.0]))


def test_soft_value_takes_the_min_over_critics_and_the_entropy_bonus():
    next_q = torch.tensor([[1.0, 5.0], [2.0, 3.0]])  # [n=2, B=2]
    logp = torch.tensor([-1.0, 0.5])
    v = losses.soft_value(next_q, logp, torch.tensor(0.2))
    assert torch.allclose(v, torch.tensor([1.0 + 0.2, 3.0 - 0.1]))


def test_discrete_soft_value_is_an_expectation_under_the_policy():
    next_q = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]])  # [n=2, B=1, A=2]
    probs = torch.tensor([[0.25, 0.75]])
    logp = probs.log()
    alpha = torch.tensor(0.5)
    v = losses.soft_value(next_q, logp, alpha, probs)
    expected = 0.25 * (1.0 - 0.5 * math.log(0.25)) + 0.75 * (0.0 - 0.5 * math.log(0.75))
    assert torch.allclose(v, torch.tensor([expected]))


def test_critic_loss_sums_critics_and_weights_rows():
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    y = torch.tensor([0.0, 2.0])
    loss, td = losses.critic_loss(q, y)
    assert torch.isclose(loss, torch.tensor((1.0 + 0.0) / 2 + (9.0 + 0.0) / 2))
    assert torch.allclose(td, torch.tensor([2.0, 0.0]))
    weighted, _ = losses.critic_loss(q, y, torch.tensor([0.5, 1.0]))
    assert torch.isclose(weighted, torch.tensor(0.5 * 1.0 / 2 + 0.5 * 9.0 / 2))


def test_actor_and_alpha_losses():
    logp = torch.tensor([-1.0, -3.0])
    q = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    assert torch.isclose(losses.actor_loss(logp, q, torch.tensor(0.5)), torch.tensor(((-0.5 - 0) + (-1.5 - 2)) / 2))
    log_alpha = torch.tensor(0.0, requires_grad=True)
    # E log π = −2, H̄ = −1: entropy (2) above target (1) → the gradient step lowers α.
    losses.alpha_loss(log_alpha, logp, target_entropy=-1.0).backward()
    assert log_alpha.grad > 0


def test_polyak_moves_targets_by_tau():
    target, online = [torch.zeros(3)], [torch.ones(3)]
    losses.polyak_(target, online, 0.005)
    assert torch.allclose(target[0], torch.full((3,), 0.005))
