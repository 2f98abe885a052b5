"""The many-env regime that `--preset auto` derives from num_envs and the device."""

import pytest

from crossq_gpu.buffer import ReplayBuffer
from crossq_gpu.config import Config, ConfigError
from crossq_gpu.configure import MANY_ENVS, build_config, describe_regime

# Brax observation / action sizes: brax.envs.get_environment(name).observation_size / action_size (brax 0.14).
BRAX_DIMS = {"ant": (27, 8), "halfcheetah": (17, 6), "humanoid": (244, 17)}


def auto(env: str, num_envs: int, cuda: bool, **flags: object) -> Config:
    cfg, chosen = build_config("auto", cuda, flags={"env.name": env, "env.num_envs": num_envs, **flags})
    assert chosen == ("paper" if cuda else "cpu")
    return cfg


def gradient_steps(cfg: Config) -> int:
    alg = cfg.agent.algorithm
    vector_steps = (cfg.run.total_steps - alg.training_start_step) // cfg.env.num_envs
    return vector_steps // alg.training_frequency * alg.training_iter


@pytest.mark.parametrize(("env", "num_envs", "cuda"), [("ant", 4096, True), ("humanoid", 4096, True),
                                                       ("halfcheetah", 256, False), ("halfcheetah", 16, False),
                                                       ("ant", 2, False)])
def test_auto_regime_holds_its_documented_constants(env: str, num_envs: int, cuda: bool) -> None:
    cfg = auto(env, num_envs, cuda)
    alg, mem, run = cfg.agent.algorithm, cfg.agent.memory, cfg.run
    replay_ratio = mem.batch_size * alg.training_iter / (num_envs * alg.training_frequency)
    assert replay_ratio == MANY_ENVS["replay_ratio"]
    grads = gradient_steps(cfg)
    assert grads == pytest.approx(MANY_ENVS["grad_steps"]["cuda" if cuda else "cpu"], rel=0.01)
    warmup = cfg.agent.critic_net.batch_renorm.warmup_steps
    assert 0 < warmup <= 0.2 * grads  # BRN leaves plain batch norm early in the run
    for name, vector_steps in MANY_ENVS["every_vector_steps"].items():
        assert getattr(run, name) >= vector_steps * num_envs, name  # no more often than the rule
    assert alg.alpha_init == MANY_ENVS["alpha_init"]
    assert alg.training_start_step >= mem.batch_size


def test_4096_env_gpu_runs_take_large_batches_and_fit_a_24_gib_card() -> None:
    for env in ("ant", "humanoid"):
        cfg = auto(env, 4096, cuda=True)
        obs_dim, act_dim = BRAX_DIMS[env]
        assert cfg.agent.memory.batch_size == 16_384 and cfg.agent.algorithm.training_iter == 8
        # The budget of docs/regime.md: buffer within 8 GiB of a 24 GiB card.
        assert ReplayBuffer.nbytes(obs_dim, (act_dim,), cfg.agent.memory.max_size) <= 8 * 2**30


@pytest.mark.parametrize("training_iter", [None, 4])
def test_explicit_settings_win_and_the_warmup_follows_the_runs_gradient_steps(training_iter: int | None) -> None:
    flags = {"run.total_steps": 200_000, "agent.memory.batch_size": 512}
    if training_iter is not None:
        flags["agent.algorithm.training_iter"] = training_iter
    cfg = auto("halfcheetah", 128, False, **flags)
    assert cfg.run.total_steps == 200_000 and cfg.agent.memory.batch_size == 512
    assert cfg.agent.algorithm.training_iter == (training_iter or 2)  # the rule's 2 at batch 2048
    grads = (200_000 - cfg.agent.algorithm.training_start_step) // 128 * cfg.agent.algorithm.training_iter
    assert cfg.agent.critic_net.batch_renorm.warmup_steps == int(MANY_ENVS["brn_warmup_share"] * grads)


def test_named_presets_and_one_env_are_left_alone() -> None:
    paper, _ = build_config("paper", True, flags={"env.num_envs": 4096})
    assert (paper.agent.memory.batch_size, paper.agent.algorithm.training_iter) == (256, 1)
    one = auto("halfcheetah", 1, False)
    assert one.agent.memory.batch_size == 256 and one.agent.critic_net.batch_renorm.warmup_steps == 100_000


def test_the_regime_line_says_what_was_chosen() -> None:
    line = describe_regime(auto("halfcheetah", 256, False))
    assert "256 envs, batch 2048, 4 update(s) per vector step, replay ratio 32" in line
    assert "BRN warmup 1000 gradient steps" in line and "eval 250, log 25, checkpoint 1250" in line


def test_a_total_written_as_yaml_1e5_fixes_the_runs_length() -> None:
    """YAML reads 1e5 as a string; the regime takes it as the number the config will hold."""
    cfg, _ = build_config("auto", False, overrides=["env.num_envs=4", "run.total_steps=1e5"])
    same, _ = build_config("auto", False, flags={"env.num_envs": 4, "run.total_steps": 100_000})
    assert cfg.run.total_steps == 100_000 and cfg == same
    with pytest.raises(ConfigError, match=r"run\.total_steps: expected a number"):
        build_config("auto", False, overrides=["env.num_envs=4", "run.total_steps=ten"])
