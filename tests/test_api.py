"""The Python API on the user's own envs: train(...) on a Gymnasium class and a Brax-style JAX env,
the same JAX env through `--env module:factory`, load_policy(...).predict against the checkpoint's
actor, and one clear error (with nothing written) for every bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import crossq_gpu
from crossq_gpu import evaluate, learner, losses
from crossq_gpu.checkpoint import load_checkpoint, save_checkpoint
from crossq_gpu.config import ConfigError, from_dict
from crossq_gpu.envs import make_env
from crossq_gpu.envs.base import EnvSourceError, UnknownEnvError
from crossq_gpu.networks import build_agent

ROOT = Path(__file__).resolve().parents[1]
TINY = {"agent": {"critic_net": {"hidden": [32, 32]}, "net": {"hidden": [32, 32]},
                  "memory": {"batch_size": 64}, "algorithm": {"training_start_step": 200, "alpha_init": 0.1}}}
FAST = {"device": "cpu", "compile": False, "log_every": 100, "preset": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Point(gym.Env):
    """A point on a line must get to 0 and stay there: obs x, action in [-2, 2] moves it by a / 4.

    Standing still scores about -20 (20 steps at |x0| ~ U(0, 2)); heading straight for 0 about -1.
    """

    observation_space = gym.spaces.Box(-4.0, 4.0, (1,), np.float32)
    action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = self.np_random.uniform(-2.0, 2.0, 1).astype(np.float32), 0
        return self.x.copy(), {}

    def step(self, action):
        self.x = np.clip(self.x + 0.25 * action, -4.0, 4.0).astype(np.float32)
        self.t += 1
        return self.x.copy(), -float(abs(self.x[0])), False, self.t >= 20, {}


class State(NamedTuple):
    """What JaxVecEnv reads of a Brax State: obs, reward, done (1.0 = terminated)."""

    obs: object
    reward: object
    done: object


class PointMass:
    """A Brax-style env in jax.numpy: a damped point mass pushed towards 0; leaving [-2, 2] ends it."""

    observation_size, action_size = 2, 1

    def reset(self, key):
        import jax
        import jax.numpy as jnp

        x = jax.random.uniform(key, (1,), minval=-1.0, maxval=1.0)
        return State(jnp.concatenate([x, jnp.zeros(1)]), jnp.zeros(()), jnp.zeros(()))

    def step(self, state, action):
        import jax.numpy as jnp

        v = 0.9 * state.obs[1] + 0.1 * action[0]
        x = state.obs[0] + 0.1 * v
        return State(jnp.stack([x, v]), -jnp.abs(x), (jnp.abs(x) > 2.0).astype(jnp.float32))


def point_mass() -> PointMass:
    """The factory the CLI imports as tests.test_api:point_mass."""
    return PointMass()


def broken_factory():
    raise RuntimeError("no robot attached")


def checkpoint_actions(run_dir: Path, obs: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The reference: the checkpoint's whole Agent, its deterministic [-1, 1] action scaled by hand."""
    payload = load_checkpoint(run_dir)
    agent = build_agent(from_dict(payload["config"]), obs.shape[-1], 1, None)
    agent.load_state_dict(payload["agent"])
    return low + (agent.act(obs, deterministic=True) + 1.0) * 0.5 * (high - low)


# --- a Gymnasium env class ------------------------------------------------------------


@pytest.fixture(scope="module")
def gym_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "point"
    return crossq_gpu.train(Point, TINY, out=out, total_steps=1000, eval_every=500, eval_episodes=5, **FAST)


def test_gym_env_class_trains_and_learns(gym_run):
    rows = [json.loads(line) for line in (gym_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert gym_run.metrics == {"train": rows[-2], "eval": rows[-1]}
    assert gym_run.metrics["train"]["env_steps"] == 1000 and gym_run.metrics["eval"]["episodes"] == 5
    assert gym_run.metrics["eval"]["return_mean"] > -3.0, gym_run.metrics  # standing still: about -20
    assert yaml.safe_load((gym_run.run_dir / "config.yaml").read_text())["env"]["name"] == "tests.test_api:Point"
    # Heads for the target from either side, at full speed when far.
    assert gym_run.policy.predict(np.array([[1.5], [-1.5]], np.float32))[:, 0].tolist() == pytest.approx(
        [-2.0, 2.0], abs=0.5)


def test_predict_equals_the_checkpoint_actor_gym(gym_run):
    obs = torch.rand(64, 1) * 8.0 - 4.0
    expected = checkpoint_actions(gym_run.run_dir, obs, -2.0, 2.0)
    policy = crossq_gpu.load_policy(gym_run.run_dir / "checkpoint.pt")
    assert torch.allclose(policy.predict(obs), expected, atol=1e-6)
    batch = policy.predict(obs.numpy())
    assert isinstance(batch, np.ndarray) and batch.shape == (64, 1) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, expected.numpy(), atol=1e-6)
    one = policy.predict(obs[3].numpy())
    assert one.shape == (1,) and one == pytest.approx(expected[3].numpy(), abs=1e-6)
    assert policy.predict(obs[3]).shape == (1,)
    sampled = policy.predict(obs, deterministic=False)
    assert (sampled.abs() <= 2.0).all() and not torch.allclose(sampled, expected)
    assert all(k.startswith("actor.") or k in ("low", "half_span") for k in policy.state_dict())


def test_checkpoints_without_env_spec_still_load(gym_run, tmp_path):
    """Checkpoints written before the env's spaces were saved: the spaces come from the named env."""
    payload = load_checkpoint(gym_run.run_dir)
    del payload["env_spec"]
    save_checkpoint(payload, tmp_path / "checkpoint.pt")
    obs = torch.rand(16, 1) * 8.0 - 4.0
    assert torch.equal(crossq_gpu.load_policy(tmp_path).predict(obs), gym_run.policy.predict(obs))


def test_bad_obs_shape(gym_run):
    with pytest.raises(ValueError, match=r"\[1\] or \[N, 1\], got \[2, 3\]"):
        gym_run.policy.predict(np.zeros((2, 3)))


def test_a_vec_env_instance_sets_num_envs_and_skips_evaluation(tmp_path):
    env = make_env("gym:Pendulum-v1", 2, "cpu", seed=0)
    result = crossq_gpu.train(env, TINY, out=tmp_path / "run", total_steps=300, **FAST)
    cfg = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert cfg["env"]["name"] == "python:crossq_gpu.envs.gymnasium.GymVecEnv"
    assert cfg["env"]["num_envs"] == 2 and cfg["run"]["eval_every"] == 0
    assert result.metrics["eval"] is None and result.metrics["train"]["env_steps"] == 300
    assert result.policy.predict(np.zeros(3)).shape == (1,)


def test_a_nan_loss_is_a_training_error(tmp_path, monkeypatch):
    monkeypatch.setattr(losses, "td_target", lambda reward, *a: torch.full_like(reward, float("nan")))
    with pytest.raises(crossq_gpu.TrainingError, match="NaN/Inf loss at gradient step 1"):
        crossq_gpu.train(Point, TINY, out=tmp_path / "run", total_steps=1000, **FAST)


def test_ctrl_c_is_a_keyboard_interrupt_after_the_checkpoint(tmp_path):
    out = tmp_path / "run"

    def interrupt_once_training() -> None:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as info:
        crossq_gpu.train(Point, TINY, out=out, total_steps=10_000_000, **FAST)
    assert isinstance(info.value, crossq_gpu.Interrupted)
    assert load_checkpoint(out)["counters"]["env_steps"] > 0


# --- the README example (before any JAX env: XLA's threads slow torch's afterwards) ---


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own environment", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert list(tmp_path.glob("runs/*/checkpoint.pt"))


# --- a Brax-style JAX env -------------------------------------------------------------

BRAX_CONFIG = {**TINY, "env": {"episode_length": 50}}


def test_brax_style_env_object_trains_resumes_and_predicts(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "run"
    result = crossq_gpu.train(PointMass(), BRAX_CONFIG, out=out, total_steps=400, num_envs=4, eval_every=200,
                              eval_episodes=4, **FAST)  # as many as num_envs: the compiled step is reused
    assert result.metrics["eval"]["episodes"] == 4 and result.metrics["train"]["env_steps"] == 400
    assert yaml.safe_load((out / "config.yaml").read_text())["env"]["name"] == "python:tests.test_api.PointMass"
    obs = torch.randn(32, 2)
    assert torch.allclose(result.policy.predict(obs), checkpoint_actions(out, obs, -1.0, 1.0), atol=1e-6)
    # The env state is JAX arrays in the checkpoint: the same object resumes the run.
    resumed = crossq_gpu.train(PointMass(), resume=out, total_steps=600, **FAST)
    assert resumed.metrics["train"]["env_steps"] == 600 and load_checkpoint(out)["counters"]["env_steps"] == 600


def test_brax_style_factory_on_the_cli(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "crossq_gpu.learner", "--env", "tests.test_api:point_mass", "--num-envs", "4",
         "--total-steps", "300", "--eval-every", "300", "--eval-episodes", "4", "--out", str(out),
         "--set", "env.episode_length=50", "--set", "agent.critic_net.hidden=[32, 32]",
         "--set", "agent.net.hidden=[32, 32]", "--set", "agent.memory.batch_size=64",
         "--set", "agent.algorithm.training_start_step=100", "--device", "cpu", "--preset", "cpu", "--no-compile"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["env"]["name"] == "tests.test_api:point_mass"
    obs = torch.randn(16, 2)
    assert torch.allclose(crossq_gpu.load_policy(out).predict(obs), checkpoint_actions(out, obs, -1.0, 1.0),
                          atol=1e-6)
    # The name rebuilds the env, so the evaluate CLI works on the run too.
    assert evaluate.main([str(out), "--episodes", "4", "--device", "cpu"]) == 0


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("env, config, flags, error, fragment", [
    (Point, None, {"bogus_flag": 1}, ConfigError, "unknown flag bogus_flag="),
    (Point, {"agent": {"memory": {"bogus": 1}}}, {}, ConfigError, "agent.memory.bogus"),
    (Point, [1, 2], {}, ConfigError, "config must be a dict or a YAML file path"),
    (Point, "no/such/config.yaml", {}, ConfigError, "cannot read config"),
    (Point, None, {"algo": "ppo"}, ConfigError, "invalid choice: 'ppo'"),
    (Point, None, {"num_envs": "many"}, ConfigError, "invalid int value: 'many'"),
    (Point, None, {"num_envs": 0}, ConfigError, "env.num_envs must be >= 1"),
    (Point, None, {"seed": [1, 2]}, ConfigError, "seed= takes one value"),
    (Point, None, {"set": ["agent.memory.bogus=1"]}, ConfigError, "agent.memory.bogus"),
    (Point(), None, {"num_envs": 4}, ConfigError, "num_envs=4, but env python:tests.test_api.Point holds 1"),
    (Point(), None, {"eval_every": 100}, ConfigError, "no second copy to evaluate on"),
    (42, None, {}, EnvSourceError, "env must be a name, a VecEnv, a gymnasium.Env"),
    (lambda: 42, None, {}, EnvSourceError, "the factory returned int"),
    (broken_factory, None, {}, EnvSourceError, "calling the factory failed (RuntimeError: no robot attached)"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, env, config, flags, error, fragment):
    out = tmp_path / "run"
    with pytest.raises(error, match=re.escape(fragment)) as info:
        crossq_gpu.train(env, config, out=out, **{**FAST, **flags})
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_an_action_pdtype_a_discrete_env_contradicts_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"action_pdtype=Normal, but env gym:CartPole-v1 has discrete actions "
                                          r"\(Categorical\); leave it auto"):
        crossq_gpu.train("gym:CartPole-v1", out=tmp_path / "run", set=["agent.algorithm.action_pdtype=Normal"], **FAST)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_unknown_env_name_writes_no_file(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UnknownEnvError, match="unknown environment 'gym:NoSuchEnv-v0'"):
        crossq_gpu.train("gym:NoSuchEnv-v0", out=out, **FAST)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name, fragment", [
    ("no_such_module_xyz:make", "cannot import no_such_module_xyz (ModuleNotFoundError"),
    ("tests.test_api:no_such_factory", "tests.test_api has no attribute no_such_factory"),
    ("tests.test_api:broken_factory", "calling the factory failed (RuntimeError: no robot attached)"),
    ("tests.test_api:ROOT", "must be a zero-argument callable"),
])
def test_module_factory_names_fail_clearly(name, fragment):
    with pytest.raises(EnvSourceError, match=re.escape(fragment)):
        make_env(name, 1)


def test_a_bad_factory_on_the_cli_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "crossq_gpu.learner", "--env", "no_such_module_xyz:make",
                             "--device", "cpu", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == learner.EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot import no_such_module_xyz" in result.stderr


def test_gym_ids_from_another_package_import_it_first(tmp_path, monkeypatch):
    (tmp_path / "my_line_pkg.py").write_text(
        "import gymnasium, numpy as np\n"
        "class Line(gymnasium.Env):\n"
        "    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)\n"
        "    action_space = gymnasium.spaces.Box(-0.5, 0.5, (2,), np.float32)\n"
        "    def __init__(self, render_mode=None):\n"
        "        self.render_mode = render_mode\n"
        "gymnasium.register(id='my_line_pkg/Line-v0', entry_point=Line)\n")
    (tmp_path / "my_broken_pkg.py").write_text("raise ImportError('needs a driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("gym:my_line_pkg/Line-v0", 2, seed=0)
    assert (env.obs_dim, env.act_dim, env.action_high.tolist()) == (3, 2, [0.5, 0.5])
    with pytest.raises(EnvSourceError, match=re.escape("importing my_broken_pkg failed (ImportError: needs a driver)")):
        make_env("gym:my_broken_pkg/Point-v0", 1)


def test_an_env_object_name_cannot_be_rebuilt_from_the_cli():
    with pytest.raises(EnvSourceError, match="pass the object to crossq_gpu.train again"):
        make_env("python:tests.test_api.PointMass", 1)
