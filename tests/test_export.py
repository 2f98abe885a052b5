"""python -m crossq_gpu.export: the standalone TorchScript / ONNX file equals Policy.predict."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from crossq_gpu import export, learner, load_policy
from tests.small_run import SMALL

OBS = torch.rand(37, 3) * 4.0 - 2.0  # Pendulum-v1 and CartPole-v1 obs are 3- and 4-dimensional


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pendulum"
    assert learner.main([*SMALL, "--total-steps", "300", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "cartpole"
    assert learner.main([*SMALL, "--env", "gym:CartPole-v1", "--total-steps", "300", "--out", str(out)]) == 0
    return out


def test_torchscript_file_equals_predict(pendulum, tmp_path):
    path = tmp_path / "policy.pt"
    result = subprocess.run([sys.executable, "-m", "crossq_gpu.export", str(pendulum), "--format", "torchscript",
                             "--out", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    scripted = torch.jit.load(str(path))
    policy = load_policy(pendulum)
    expected = policy.predict(OBS)
    assert torch.allclose(expected, 2.0 * policy.act(OBS), atol=1e-6)  # Pendulum's [-2, 2], not [-1, 1]
    assert torch.allclose(scripted(OBS), expected, atol=1e-6)
    assert torch.allclose(scripted(OBS[:1]), expected[:1], atol=1e-6)  # any batch size, not the traced one


def test_torchscript_discrete_actions(cartpole, tmp_path):
    path = tmp_path / "policy.pt"
    assert export.main([str(cartpole), "--format", "torchscript", "--out", str(path)]) == 0
    obs = torch.rand(50, 4) * 2.0 - 1.0
    actions = torch.jit.load(str(path))(obs)
    assert actions.dtype == torch.int64 and torch.equal(actions, load_policy(cartpole).predict(obs))


def test_onnx_file_equals_predict(pendulum, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "policy.onnx"
    assert export.main([str(pendulum), "--format", "onnx", "--out", str(path)]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = load_policy(pendulum).predict(OBS.numpy())
    for n in (37, 1):
        (action,) = session.run(["action"], {"obs": OBS[:n].numpy()})
        np.testing.assert_allclose(action, expected[:n], atol=1e-5)


def test_onnx_without_the_extra_says_what_to_install(pendulum, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)  # as if not installed
    assert export.main([str(pendulum), "--format", "onnx", "--out", str(tmp_path / "p.onnx")]) == 2
    assert "pip install 'crossq-gpu[onnx]'" in capsys.readouterr().err


def test_no_checkpoint_is_one_line(tmp_path, capsys):
    assert export.main([str(tmp_path), "--format", "torchscript", "--out", str(tmp_path / "p.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint" in err and not (tmp_path / "p.pt").exists()
