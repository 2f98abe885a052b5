"""The CrossQ and SAC updates: the joint forward, modes, targets, α, and compilation."""

import copy

import pytest
import torch
from torch import nn

from crossq_gpu.buffer import make_buffer
from crossq_gpu.config import build_config
from crossq_gpu.networks import build_agent
from crossq_gpu.update import Update, target_entropy

OBS, ACT, B = 5, 2, 16


def make(algo="CrossQ", discrete=False, compile=False, extra=()):
    cfg, _ = build_config("cpu", False, overrides=[
        f"agent.algorithm.name={algo}", "agent.critic_net.hidden=[32, 32]", "agent.net.hidden=[32, 32]",
        f"agent.memory.batch_size={B}", "agent.critic_net.batch_renorm.warmup_steps=2",
        f"run.compile={str(compile).lower()}", *extra])
    num_actions = 3 if discrete else None
    agent = build_agent(cfg, OBS, None if discrete else ACT, num_actions)
    buffer = make_buffer(cfg.agent.memory.name, obs_dim=OBS, action_shape=() if discrete else (ACT,), max_size=256,
                         num_envs=8, device="cpu", action_dtype=torch.int64 if discrete else torch.float32)
    for _ in range(8):
        action = torch.randint(3, (8,)) if discrete else torch.rand(8, ACT) * 2 - 1
        buffer.add(torch.randn(8, OBS), action, torch.randn(8), torch.randn(8, OBS), (torch.rand(8) < 0.1).float())
    update = Update(agent, buffer, cfg, target_entropy(cfg, None if discrete else ACT, num_actions),
                    torch.device("cpu"))
    return cfg, agent, buffer, update


def brn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "steps"))}


@pytest.mark.parametrize("discrete", [False, True])
def test_crossq_runs_one_joint_critic_forward_on_2B_rows(discrete):
    _, agent, buffer, update = make(discrete=discrete)
    calls = []
    agent.critic.register_forward_hook(lambda m, args, kwargs, out: calls.append((args[0].shape[0], kwargs["training"])),
                                       with_kwargs=True)
    update.critic_losses(buffer.sample(B))
    assert calls == [(2 * B, True)]


def test_joint_forward_uses_statistics_of_both_halves():
    """Q(s,a) from the joint pass differs from a pass over (s,a) alone: the batch statistics are shared."""
    _, agent, buffer, _ = make()
    batch = buffer.sample(B)
    a2 = torch.rand(B, ACT)
    joint = agent.critic(torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.action, a2]), training=True)[:, :B]
    alone = agent.critic(batch.obs, batch.action, training=True)
    assert not torch.allclose(joint, alone)


def test_actor_step_uses_eval_critics_and_changes_no_brn_statistic():
    _, agent, buffer, update = make()
    update.step()  # one critic step so the statistics are not the initial ones
    before_stats = brn_state(agent.critic)
    before_params = [p.clone() for p in agent.critic.parameters()]
    update.critic_opt.zero_grad(set_to_none=True)
    calls = []
    agent.critic.register_forward_hook(lambda m, a, kw, out: calls.append(kw["training"]), with_kwargs=True)
    loss, _ = update.policy_losses(buffer.sample(B))
    update.actor_opt.zero_grad()
    loss.backward(inputs=update.actor_params)
    update.actor_opt.step()
    assert calls == [False]
    for k, v in brn_state(agent.critic).items():
        assert torch.equal(v, before_stats[k]), k
    for p, q in zip(agent.critic.parameters(), before_params):
        assert p.grad is None and torch.equal(p, q)


def test_actor_gets_the_policy_gradient_through_the_critic():
    _, agent, buffer, update = make()
    before = [p.clone() for p in agent.actor.parameters()]
    for _ in range(3):  # policy_delay = 3: the third step moves the actor
        update.step()
    assert all(not torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before))


def test_policy_delay_counts_gradient_steps():
    _, agent, _, update = make()
    actor_moves = []
    for _ in range(6):
        before = agent.log_alpha.detach().clone()
        metrics = update.step()
        actor_moves.append("actor_loss" in metrics and not torch.equal(before, agent.log_alpha))
    assert actor_moves == [False, False, True, False, False, True]


def test_alpha_moves_towards_the_target_entropy():
    _, agent, _, update = make(extra=["agent.algorithm.policy_delay=1"])
    update.target_entropy = 100.0  # far above any achievable entropy: α must grow
    start = agent.log_alpha.item()
    for _ in range(3):
        update.step()
    assert agent.log_alpha.item() > start


def test_sac_target_critics_move_by_tau():
    cfg, agent, _, update = make(algo="SAC")
    assert agent.critic_target is not None
    target_before = copy.deepcopy(agent.critic_target.state_dict())
    update.step()
    tau = cfg.agent.algorithm.tau
    online = agent.critic.state_dict()
    for name, value in agent.critic_target.state_dict().items():
        assert torch.allclose(value, (1 - tau) * target_before[name] + tau * online[name], atol=1e-7)


def test_sac_critics_have_no_batch_renorm():
    _, agent, _, _ = make(algo="SAC")
    assert not any("norm" in n for n, _ in agent.critic.named_modules() if n)


def test_crossq_critic_member_equals_an_independent_batchnorm_mlp():
    """During warmup BRN is BatchNorm; ensemble member j must equal a plain nn.Sequential with j's weights."""
    _, agent, buffer, _ = make(extra=["agent.critic_net.batch_renorm.warmup_steps=1000"])
    mlp = agent.critic.mlp
    j = 1
    layers: list[nn.Module] = [nn.BatchNorm1d(OBS + ACT, eps=1e-3, momentum=0.01)]
    for lin in mlp.linears:
        linear = nn.Linear(*lin.weight.shape[1:])
        linear.weight.data = lin.weight[j].T.clone()
        linear.bias.data = lin.bias[j, 0].clone()
        layers += [linear, nn.ReLU(), nn.BatchNorm1d(linear.out_features, eps=1e-3, momentum=0.01)]
    head = nn.Linear(*mlp.head.weight.shape[1:])
    head.weight.data, head.bias.data = mlp.head.weight[j].T.clone(), mlp.head.bias[j, 0].clone()
    reference = nn.Sequential(*layers, head).train()
    batch = buffer.sample(B)
    x = torch.cat([batch.obs, batch.action], -1)
    ours = agent.critic(batch.obs, batch.action, training=True)[j]
    assert torch.allclose(ours, reference(x).squeeze(-1), atol=1e-5)


@pytest.mark.parametrize("algo", ["CrossQ", "SAC"])
def test_compiled_update_equals_eager(algo):
    """fullgraph=True: no graph break and no host sync in the losses (forward and AOT backward)."""
    torch._inductor.config.fallback_random = True  # compiled randn must equal eager randn
    torch._dynamo.reset()  # an Update compiled earlier (other RNG config) would be reused by this one
    torch.manual_seed(1)
    _, agent_e, buffer, eager = make(algo=algo)
    torch.manual_seed(1)
    _, agent_c, _, compiled = make(algo=algo, compile=True)
    compiled.buffer = eager.buffer = buffer
    for _ in range(4):  # crosses BRN warmup (2 steps) and includes an actor step
        torch.manual_seed(2)
        m_e = eager.step()
        torch.manual_seed(2)
        m_c = compiled.step()
        for k in m_e:
            assert torch.allclose(m_e[k], m_c[k], rtol=1e-4, atol=1e-5), k
    for (n, p), q in zip(agent_e.state_dict().items(), agent_c.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-4, atol=1e-5), n
