"""The networks: StackedLinear, every critic layout against plain torch.nn, discrete acting."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossq_gpu.networks import INIT_NORM, StackedLinear, build_agent, gumbel_max_sample
from tests.factories import ACT, OBS, B, small_config


@pytest.mark.parametrize("out_features", [1, 3])  # 1: the Q head's dot-product path
def test_stacked_linear_equals_independent_linears_with_gradients(out_features):
    torch.manual_seed(0)
    layer = StackedLinear(2, 5, out_features).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 7, out_features)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    y_ref = torch.stack([F.linear(x_ref[j], w_ref[j].T, b_ref[j, 0]) for j in range(2)])
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for ours, ref in ((x.grad, x_ref.grad), (layer.weight.grad, w_ref.grad), (layer.bias.grad, b_ref.grad)):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
@pytest.mark.parametrize("brn_order", ["post_activation", "pre_activation"])
@pytest.mark.parametrize("input_brn", [True, False])
def test_crossq_critic_member_equals_an_independent_batchnorm_mlp(activation, brn_order, input_brn):
    """During warmup BRN is BatchNorm; ensemble member j must equal a plain nn.Sequential with j's
    weights, in every layout: BRN before or after the activation (fused ReLU or not), with or
    without the input BRN."""
    cfg = small_config("agent.critic_net.batch_renorm.warmup_steps=1000", f"agent.critic_net.activation={activation}",
                       f"agent.critic_net.brn_order={brn_order}",
                       f"agent.critic_net.input_brn={str(input_brn).lower()}")
    critic = build_agent(cfg, OBS, ACT, None).critic
    mlp = critic.mlp
    j = 1
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}[activation]
    layers: list[nn.Module] = [nn.BatchNorm1d(OBS + ACT, eps=1e-3, momentum=0.01)] if input_brn else []
    for lin in mlp.linears:
        linear = nn.Linear(*lin.weight.shape[1:])
        linear.weight.data = lin.weight[j].T.clone()
        linear.bias.data = lin.bias[j, 0].clone()
        norm = nn.BatchNorm1d(linear.out_features, eps=1e-3, momentum=0.01)
        layers += [linear, act(), norm] if brn_order == "post_activation" else [linear, norm, act()]
    head = nn.Linear(*mlp.head.weight.shape[1:])
    head.weight.data, head.bias.data = mlp.head.weight[j].T.clone(), mlp.head.bias[j, 0].clone()
    reference = nn.Sequential(*layers, head).train()
    x = torch.randn(B, OBS + ACT) * 2 + 0.5
    ours = critic(x[:, :OBS], x[:, OBS:], training=True)[j]
    assert torch.allclose(ours, reference(x).squeeze(-1), atol=1e-5)


@pytest.mark.parametrize("brn_order", ["post_activation", "pre_activation"])
def test_weight_projection_keeps_the_critics_output_in_train_and_eval_mode(brn_order: str) -> None:
    """Weights of mixed sizes and renormalising BRN layers with moved running statistics: after
    the projection every hidden unit's (weights, bias) has norm INIT_NORM, and Q in train mode
    (r, d from the running statistics) and in eval mode is what it was. BRN's eps is the one
    term that does not scale with a unit's weights; it is set near 0 here to show the rest exact."""
    torch.manual_seed(0)
    cfg = small_config("agent.critic_net.batch_renorm.warmup_steps=0", f"agent.critic_net.brn_order={brn_order}",
                       "agent.critic_net.batch_renorm.momentum=0.5", "agent.critic_net.weight_norm=true",
                       "agent.critic_net.batch_renorm.eps=1e-9")
    critic = build_agent(cfg, OBS, ACT, None).critic
    mlp = critic.mlp
    with torch.no_grad():
        for linear in mlp.linears:
            scale = torch.rand(linear.weight.shape[0], 1, linear.weight.shape[-1]) * 20 + 0.1
            linear.weight.mul_(scale)
            linear.bias.mul_(scale)
    obs, act = torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1
    for _ in range(3):  # running statistics away from their initial (0, 1), in each unit's own scale
        critic(obs * 2 + 1, act, training=True)
    state = {k: v.clone() for k, v in critic.state_dict().items()}
    want = []
    for mode in (True, False):  # a train-mode call moves the running statistics: each call from `state`
        critic.load_state_dict(state)
        want.append(critic(obs, act, training=mode))
    critic.load_state_dict(state)
    mlp.project_weights_()
    for linear in mlp.linears:
        norms = torch.sqrt(linear.weight.square().sum(1) + linear.bias.square().squeeze(1))
        torch.testing.assert_close(norms, torch.full_like(norms, INIT_NORM))
    projected = {k: v.clone() for k, v in critic.state_dict().items()}
    for mode, q in zip((True, False), want):
        critic.load_state_dict(projected)
        torch.testing.assert_close(critic(obs, act, training=mode), q, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(projected["mlp.linears.0.weight"], state["mlp.linears.0.weight"])


CHI2_999_DF4 = 18.47  # 99.9 % quantile of chi-square with 4 degrees of freedom: a 1-in-1000 false alarm
PROBS = torch.tensor([0.5, 0.25, 0.15, 0.09, 0.01])


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's statistic of observed counts against expected ones."""
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_two_samples(a: torch.Tensor, b: torch.Tensor) -> float:
    """Whether two equal-sized samples' counts come from one distribution (homogeneity test)."""
    return float(((a - b) ** 2 / (a + b)).sum())


def counts(actions: torch.Tensor) -> torch.Tensor:
    return torch.bincount(actions, minlength=len(PROBS)).double()


def test_gumbel_max_sampling_matches_multinomial() -> None:
    n = 200_000
    log_probs = PROBS.log().expand(n, -1)
    gumbel = counts(gumbel_max_sample(log_probs))
    multinomial = counts(torch.multinomial(PROBS.expand(n, -1), 1).squeeze(-1))
    assert chi_square_two_samples(gumbel, multinomial) < CHI2_999_DF4
    assert chi_square(gumbel, n * PROBS.double()) < CHI2_999_DF4
    # The check has the power to see a sampler 5 % off in temperature.
    assert chi_square_two_samples(counts(gumbel_max_sample(1.05 * log_probs)), multinomial) > CHI2_999_DF4


def test_discrete_acting_compiles_to_one_graph(fresh_dynamo: None) -> None:
    """fullgraph=True: no graph break in the acting step (an `.item()` or a branch on a tensor
    would be one), and its draws, from Inductor's own RNG, still follow the policy."""
    agent = build_agent(small_config(), OBS, None, len(PROBS))
    n = 100_000
    obs = torch.randn(1, OBS).expand(n, -1)
    actions = torch.compile(agent.act, fullgraph=True)(obs, deterministic=False)
    probs = agent.actor(obs[:1], training=False)[0][0].detach().double()
    assert actions.shape == (n,) and actions.dtype == torch.int64
    assert chi_square(counts(actions), n * probs) < CHI2_999_DF4
