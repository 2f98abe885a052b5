"""Configuration: presets, YAML round trip, --set overrides and errors that name the field."""

import dataclasses

import pytest
import yaml

from crossq_gpu.config import Config, ConfigError, field_info, from_dict, to_dict
from crossq_gpu.configure import PRESETS, build_config, load_yaml, save_yaml, set_dotted


def test_paper_preset_matches_the_paper_defaults():
    cfg, name = build_config("paper", cuda_available=True)
    assert name == "paper"
    alg, critic = cfg.agent.algorithm, cfg.agent.critic_net
    assert (alg.gamma, alg.policy_delay, alg.training_start_step, alg.alpha_init) == (0.99, 3, 5000, 1.0)
    assert critic.hidden == [2048, 2048] and critic.n_critics == 2 and critic.input_brn
    brn = critic.batch_renorm
    assert (brn.momentum, brn.eps, brn.r_max, brn.d_max, brn.warmup_steps) == (0.01, 1e-3, 3.0, 5.0, 100_000)
    assert cfg.agent.net.optim.betas == [0.5, 0.999] and cfg.agent.memory.batch_size == 256


def test_auto_preset_is_cpu_without_cuda():
    cfg, name = build_config("auto", cuda_available=False)
    assert name == "cpu"
    assert cfg.agent.critic_net.hidden == [256, 256]
    assert cfg.env.name == PRESETS["cpu"]["env"]["name"]


def test_yaml_round_trip(tmp_path):
    cfg, _ = build_config("paper", False, overrides=["agent.memory.name=PrioritizedReplay", "run.seed=7"])
    save_yaml(cfg, tmp_path / "config.yaml")
    again, _ = build_config("cpu", False, config_file=str(tmp_path / "config.yaml"))
    assert to_dict(again) == to_dict(cfg)


def test_partial_file_merges_over_preset_and_set_wins(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"agent": {"algorithm": {"gamma": 0.95, "policy_delay": 2}}}))
    cfg, _ = build_config("paper", False, str(tmp_path / "c.yaml"), ["agent.algorithm.policy_delay=5"])
    assert cfg.agent.algorithm.gamma == 0.95
    assert cfg.agent.algorithm.policy_delay == 5
    assert cfg.agent.critic_net.hidden == [2048, 2048]


def test_set_parses_yaml_values():
    tree = set_dotted(to_dict(Config()), "agent.critic_net.hidden=[64, 32]")
    tree = set_dotted(tree, "run.total_steps=1e5")
    cfg = from_dict(tree)
    assert cfg.agent.critic_net.hidden == [64, 32]
    assert cfg.run.total_steps == 100_000 and isinstance(cfg.run.total_steps, int)


@pytest.mark.parametrize("assignment, fragment", [
    ("agent.memory.bogus=1", "agent.memory.bogus"),
    ("agent.critic_net.batch_renorm.rmax=3", "agent.critic_net.batch_renorm.rmax"),
    ("nope=1", "nope"),
    ("agent.algorithm.name=PPO", "agent.algorithm.name"),
    ("run.compile=maybe", "run.compile"),
    ("env.num_envs=0", "env.num_envs"),
    ("agent.critic_net.batch_renorm.momentum=0", "momentum"),
])
def test_bad_fields_are_named(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_config("paper", False, overrides=[assignment])


def test_unknown_key_in_file_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("agent:\n  net:\n    hiden: [1]\n")
    with pytest.raises(ConfigError, match=r"agent\.net\.hiden"):
        build_config("paper", False, str(tmp_path / "c.yaml"))


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("fast", False)


def test_invalid_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("agent: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "c.yaml")


def test_each_layer_wins_over_the_one_below(tmp_path):
    """Defaults < preset < file < tree (the Python API's dict) < flags < --set, one field per layer."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"agent": {"algorithm": {
        "tau": 0.1, "policy_delay": 2, "gamma": 0.9, "training_iter": 5}}}))
    tree = {"agent": {"algorithm": {"policy_delay": 4, "gamma": 0.95, "training_iter": 6}}}
    flags = {"agent.algorithm.gamma": 0.97, "agent.algorithm.training_iter": 7}
    cfg, _ = build_config("cpu", False, str(tmp_path / "c.yaml"), ["agent.algorithm.training_iter=8"], flags, tree)
    alg = cfg.agent.algorithm
    assert (alg.tau, alg.policy_delay, alg.gamma, alg.training_iter) == (0.1, 4, 0.97, 8)
    assert cfg.agent.critic_net.hidden == [256, 256] and cfg.agent.memory.max_size == 1_000_000


def test_a_tree_sets_the_many_env_regime_as_a_file_does(tmp_path):
    given = {"env": {"num_envs": 16}, "run": {"total_steps": 50_000}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(given))
    from_tree, _ = build_config("auto", False, tree=given)
    from_file, _ = build_config("auto", False, str(tmp_path / "c.yaml"))
    assert to_dict(from_tree) == to_dict(from_file)
    assert from_tree.agent.algorithm.training_iter == 2 and from_tree.run.total_steps == 50_000  # 32 · 16 / 256


def field_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every leaf and section of the tree, as dotted paths (from the dataclasses, not the docstrings)."""
    paths = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        paths.append(path)
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            paths += field_paths(type(default), path + ".")
    return paths


def test_every_config_field_has_a_docstring():
    paths = field_paths()
    assert len(paths) >= 64 and "agent.critic_net.batch_renorm.r_max" in paths
    assert [path for path in paths if not field_info(path)[1].strip()] == []
    assert field_info("run.total_steps") == (int, "Env steps, all envs counted; an absolute total, also on --resume.")
    with pytest.raises(ConfigError, match="no config field run.totl_steps"):
        field_info("run.totl_steps")
