"""The CrossQ and SAC updates: the joint forward, modes, targets, α, compilation (fresh noise
every call), bf16 autocast."""

import copy

import pytest
import torch

from crossq_gpu.kernels import BatchRenorm1d
from crossq_gpu.networks import StackedLinear
from tests.factories import ACT, B, small_update


def brn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "steps"))}


@pytest.mark.parametrize("discrete", [False, True])
def test_crossq_runs_one_joint_critic_forward_on_2B_rows(discrete):
    update = small_update(discrete=discrete)
    agent, buffer = update.agent, update.buffer
    calls = []
    def record(module: object, args: tuple, kwargs: dict, out: object) -> None:
        calls.append((args[0].shape[0], kwargs["training"]))

    agent.critic.register_forward_hook(record, with_kwargs=True)
    update.critic_losses(buffer.sample(B))
    assert calls == [(2 * B, True)]


def test_joint_forward_uses_statistics_of_both_halves():
    """Q(s,a) from the joint pass differs from a pass over (s,a) alone: the batch statistics are shared."""
    update = small_update()
    agent, batch = update.agent, update.buffer.sample(B)
    a2 = torch.rand(B, ACT)
    joint = agent.critic(torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.action, a2]), training=True)[:, :B]
    alone = agent.critic(batch.obs, batch.action, training=True)
    assert not torch.allclose(joint, alone)


def test_actor_step_uses_eval_critics_and_changes_no_brn_statistic():
    update = small_update()
    agent = update.agent
    update.step()  # one critic step so the statistics are not the initial ones
    before_stats = brn_state(agent.critic)
    before_params = [p.clone() for p in agent.critic.parameters()]
    update.critic_opt.zero_grad(set_to_none=True)
    calls = []
    agent.critic.register_forward_hook(lambda m, a, kw, out: calls.append(kw["training"]), with_kwargs=True)
    loss, _ = update.policy_losses(update.buffer.sample(B))
    update.actor_opt.zero_grad()
    loss.backward(inputs=update.actor_params)
    update.actor_opt.step()
    assert calls == [False]
    for k, v in brn_state(agent.critic).items():
        assert torch.equal(v, before_stats[k]), k
    for p, q in zip(agent.critic.parameters(), before_params):
        assert p.grad is None and torch.equal(p, q)


def test_actor_gets_the_policy_gradient_through_the_critic():
    update = small_update()
    agent = update.agent
    before = [p.clone() for p in agent.actor.parameters()]
    for _ in range(3):  # policy_delay = 3: the third step moves the actor
        update.step()
    assert all(not torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before))


def test_policy_delay_counts_gradient_steps():
    update = small_update()
    agent = update.agent
    actor_moves = []
    for _ in range(6):
        before = agent.log_alpha.detach().clone()
        metrics = update.step()
        actor_moves.append("actor_loss" in metrics and not torch.equal(before, agent.log_alpha))
    assert actor_moves == [False, False, True, False, False, True]


def test_alpha_moves_towards_the_target_entropy():
    update = small_update("agent.algorithm.policy_delay=1")
    agent = update.agent
    update.target_entropy = 100.0  # far above any achievable entropy: α must grow
    start = agent.log_alpha.item()
    for _ in range(3):
        update.step()
    assert agent.log_alpha.item() > start


def test_sac_target_critics_move_by_tau():
    update = small_update(algo="SAC")
    agent = update.agent
    assert agent.critic_target is not None
    target_before = copy.deepcopy(agent.critic_target.state_dict())
    update.step()
    tau = update.tau
    online = agent.critic.state_dict()
    for name, value in agent.critic_target.state_dict().items():
        assert torch.allclose(value, (1 - tau) * target_before[name] + tau * online[name], atol=1e-7)


def test_sac_critics_have_no_batch_renorm():
    agent = small_update(algo="SAC").agent
    assert not any("norm" in n for n, _ in agent.critic.named_modules() if n)


@pytest.mark.parametrize("algo", ["CrossQ", "SAC"])
def test_compiled_update_equals_eager(algo):
    """fullgraph=True: no graph break and no host sync in the losses (forward and AOT backward)."""
    torch._inductor.config.fallback_random = True  # compiled randn must equal eager randn
    torch._dynamo.reset()  # an Update compiled earlier (other RNG config) would be reused by this one
    torch.manual_seed(1)
    eager = small_update(algo=algo)
    torch.manual_seed(1)
    compiled = small_update("run.compile=true", algo=algo)
    compiled.buffer = eager.buffer
    agent_e, agent_c = eager.agent, compiled.agent
    for _ in range(4):  # crosses BRN warmup (2 steps) and includes an actor step
        torch.manual_seed(2)
        m_e = eager.step()
        torch.manual_seed(2)
        m_c = compiled.step()
        for k in m_e:
            assert torch.allclose(m_e[k], m_c[k], rtol=1e-4, atol=1e-5), k
    for (n, p), q in zip(agent_e.state_dict().items(), agent_c.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-4, atol=1e-5), n


@torch._inductor.config.patch(fallback_random=False)
def test_compiled_losses_draw_fresh_noise_every_call(fresh_dynamo: None) -> None:
    """Same batch, same parameters, two calls of the compiled losses: a' ~ π(s') and ã ~ π(s)
    must differ (tests/test_fused_step.py checks the same of the whole-step program).

    Inductor's own RNG (fallback_random off, the default) is what the learner runs; a
    compiled graph that baked its noise in would return identical losses.
    """
    update = small_update("run.compile=true", "run.fused_step=false", "agent.critic_net.batch_renorm.warmup_steps=1000")
    batch = update.buffer.sample(B)
    critic = [update.critic_losses(batch)[0].detach() for _ in range(2)]
    actor = [update.policy_losses(batch)[1]["actor_loss"] for _ in range(2)]
    assert not torch.equal(*critic), "critic loss repeated: a' noise is stale"
    assert not torch.equal(*actor), "actor loss repeated: ã noise is stale"


def test_consecutive_compiled_steps_sample_new_batches(fresh_dynamo: None) -> None:
    """The compiled-losses path samples outside its programs, where a wrapper of `sample` sees each call.

    The fused step samples inside its program; tests/test_fused_step.py's fused == eager runs
    (a new seed before each step) cover its batches."""
    update = small_update("run.compile=true", "run.fused_step=false")
    seen = []
    update.buffer.sample = lambda n, sample=update.buffer.sample: seen.append(sample(n)) or seen[-1]  # type: ignore[method-assign]
    update.step()
    update.step()
    assert not torch.equal(seen[0].indices, seen[1].indices)


def test_bf16_autocast_keeps_batch_renorm_float32() -> None:
    update = small_update("run.autocast=bf16")
    dtypes: dict[str, set[torch.dtype]] = {"linear": set(), "brn": set(), "q_head": set()}
    critic = update.agent.critic
    for module in critic.modules():
        kind = ("q_head" if module is critic.mlp.head else "linear" if isinstance(module, StackedLinear)
                else "brn" if isinstance(module, BatchRenorm1d) else None)
        if kind:
            module.register_forward_hook(lambda m, args, out, kind=kind: dtypes[kind].add(out.dtype))
    for _ in range(6):  # crosses BRN warmup and includes two actor steps
        metrics = update.step()
    # The Q head is a dot product (no matmul), so it stays in the float32 of the BRN before it.
    assert dtypes == {"linear": {torch.bfloat16}, "brn": {torch.float32}, "q_head": {torch.float32}}
    for name, buf in update.agent.critic.named_buffers():
        if "running" in name:
            assert buf.dtype == torch.float32 and torch.isfinite(buf).all(), name
    assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
    assert all(p.dtype == torch.float32 for p in update.agent.parameters())
