"""The torch reference of Batch Renormalization against independent oracles (docs/design.md §2).

Oracles: torch.nn.BatchNorm1d while steps < warmup_steps, and a float64 transcription of the
formulas after warmup, with inputs chosen so that r and d clip on both sides.
"""

import pytest
import torch
from torch import Tensor, nn

from crossq_gpu.kernels import BatchRenorm1d, BrnParams, LazyBatchRenorm1d, batch_renorm

HYPER = dict(momentum=0.01, eps=1e-3, r_max=3.0, d_max=5.0)


def clipping_case(n: int, c: int) -> tuple[Tensor, Tensor, Tensor]:
    """x [n, c] and running stats such that channel k % 5 has r = r_max, r = 1/r_max,
    d = +d_max, d = −d_max, or nothing clipped (checked by `test_case_really_clips`)."""
    z = torch.randn(n, c, dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, correction=0)
    kind = torch.arange(c) % 5
    std = torch.tensor([10.0, 0.05, 1.0, 1.0, 1.3], dtype=torch.float64)[kind]
    mean = torch.tensor([0.0, 0.0, 20.0, -20.0, 0.4], dtype=torch.float64)[kind]
    running_var = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.2])[kind]
    running_mean = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1])[kind]
    return (z * std + mean).float(), running_mean, running_var


def formula_float64(
    x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
    steps: int, warmup_steps: int, relu: str = "none",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """docs/design.md §2 in float64: (y, r, d, new running_mean, new running_var); y differentiable."""
    eps, r_max, d_max, momentum = HYPER["eps"], HYPER["r_max"], HYPER["d_max"], HYPER["momentum"]
    h = torch.relu(x) if relu == "input" else x
    n = h.shape[-2]
    mu = h.mean(-2)
    var = ((h - mu.unsqueeze(-2)) ** 2).mean(-2)
    sigma = torch.sqrt(var + eps)
    sigma_run = torch.sqrt(running_var.double() + eps)
    if steps < warmup_steps:
        r, d = torch.ones_like(mu), torch.zeros_like(mu)
    else:
        r = (sigma / sigma_run).clamp(1 / r_max, r_max).detach()
        d = ((mu - running_mean.double()) / sigma_run).clamp(-d_max, d_max).detach()
    xhat = (h - mu.unsqueeze(-2)) / sigma.unsqueeze(-2) * r.unsqueeze(-2) + d.unsqueeze(-2)
    y = weight.unsqueeze(-2) * xhat + bias.unsqueeze(-2)
    y = torch.relu(y) if relu == "output" else y
    new_mean = running_mean.double() + momentum * (mu.detach() - running_mean.double())
    new_var = running_var.double() + momentum * (var.detach() * n / (n - 1) - running_var.double())
    return y, r, d, new_mean, new_var


def grads(y: Tensor, g: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(y, inputs, g)


def close(a: Tensor, b: Tensor, tol: float = 1e-4) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


def test_warmup_equals_batchnorm1d() -> None:
    c, momentum, eps = 7, 0.3, 1e-3
    brn = BatchRenorm1d(c, BrnParams(momentum=momentum, eps=eps))
    bn = nn.BatchNorm1d(c, eps=eps, momentum=momentum)
    with torch.no_grad():
        for m in (brn, bn):
            m.weight.copy_(torch.linspace(0.5, 2.0, c))
            m.bias.copy_(torch.linspace(-1.0, 1.0, c))
    for step in range(4):
        for training in (True, False):
            brn.train(training), bn.train(training)
            x = (torch.randn(32, c) * 3 + step).requires_grad_()
            g = torch.randn(32, c)
            y_brn, y_bn = brn(x), bn(x)
            close(y_brn, y_bn)
            for a, b in zip(grads(y_brn, g, x, brn.weight, brn.bias), grads(y_bn, g, x, bn.weight, bn.bias)):
                close(a, b)
            close(brn.running_mean, bn.running_mean)
            close(brn.running_var, bn.running_var)
    assert brn.steps.item() == bn.num_batches_tracked.item() == 4


def test_case_really_clips() -> None:
    x, rm, rv = clipping_case(16, 5)
    _, r, d, _, _ = formula_float64(x.double(), torch.ones(5), torch.zeros(5), rm, rv, 1, 0)
    assert r[0] == HYPER["r_max"] and r[1] == 1 / HYPER["r_max"]
    assert d[2] == HYPER["d_max"] and d[3] == -HYPER["d_max"]
    assert 1 / HYPER["r_max"] < r[4] < HYPER["r_max"] and abs(d[4]) < HYPER["d_max"]


@pytest.mark.parametrize("relu", ["none", "input", "output"])
def test_after_warmup_equals_float64_formula(relu: str) -> None:
    n, c, warmup = 24, 10, 1
    layer = BatchRenorm1d(c, BrnParams(warmup_steps=warmup, **HYPER), relu=relu)
    x0, rm, rv = clipping_case(n, c)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, c))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, c))
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
    for step in range(3):  # step 0 is still warmup, steps 1 and 2 renormalise
        x = (x0 + 0.1 * step * torch.randn(n, c)).requires_grad_()
        g = torch.randn(n, c)
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias))
        y64, r, d, mean64, var64 = formula_float64(
            x64, w64, b64, layer.running_mean, layer.running_var, step, warmup, relu
        )
        if step == 1 and relu != "input":  # relu(x) moves the statistics of the input
            assert r.max() == HYPER["r_max"] and r.min() == 1 / HYPER["r_max"]
            assert d.max() == HYPER["d_max"] and d.min() == -HYPER["d_max"]
        y = layer(x)
        close(y, y64)
        for a, b in zip(grads(y, g, x, layer.weight, layer.bias), grads(y64, g.double(), x64, w64, b64)):
            close(a, b, 2e-4)
        close(layer.running_mean, mean64)
        close(layer.running_var, var64)
        assert layer.steps.item() == step + 1 and layer.steps.dtype == torch.int64


def test_training_needs_two_rows_eval_takes_one() -> None:
    layer = BatchRenorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchRenorm1d(3, ensemble_size=2)(torch.randn(2, 1, 3))
    layer.eval()
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(4.0)
    x = torch.randn(1, 3)
    close(layer(x), (x - 0.5) / (4.0 + layer.params.eps) ** 0.5)
    assert layer.steps.item() == 0


def test_rejects_mismatched_shapes_and_options() -> None:
    with pytest.raises(ValueError, match="weight has shape"):
        BatchRenorm1d(3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="relu must be"):
        BatchRenorm1d(3, relu="both")(torch.randn(4, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl must be"):
        BatchRenorm1d(3, impl="cuda")(torch.randn(4, 3))  # type: ignore[arg-type]


def test_ensemble_equals_separate_layers() -> None:
    e, n, c = 3, 16, 5
    ensemble = BatchRenorm1d(c, BrnParams(warmup_steps=2, **HYPER), ensemble_size=e, relu="output")
    singles = [BatchRenorm1d(c, BrnParams(warmup_steps=2, **HYPER), relu="output") for _ in range(e)]
    with torch.no_grad():
        ensemble.weight.uniform_(0.5, 2.0)
        ensemble.bias.uniform_(-1.0, 1.0)
        for i, s in enumerate(singles):
            s.weight.copy_(ensemble.weight[i])
            s.bias.copy_(ensemble.bias[i])
    for _ in range(4):  # crosses warmup at step 2
        for training in (True, False):
            ensemble.train(training)
            x = (torch.randn(e, n, c) * 2 + 1).requires_grad_()
            g = torch.randn(e, n, c)
            y = ensemble(x)
            dx, dw, db = grads(y, g, x, ensemble.weight, ensemble.bias)
            for i, s in enumerate(singles):
                s.train(training)
                xi = x[i].detach().requires_grad_()
                yi = s(xi)
                close(y[i], yi)
                for a, b in zip((dx[i], dw[i], db[i]), grads(yi, g[i], xi, s.weight, s.bias)):
                    close(a, b)
                close(ensemble.running_mean[i], s.running_mean)
                close(ensemble.running_var[i], s.running_var)
    assert ensemble.steps.shape == () and ensemble.steps.item() == 4


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("steps", [0, 5])
def test_fused_relu_equals_composition(training: bool, steps: int) -> None:
    x0, rm, rv = clipping_case(20, 5)
    g = torch.randn(20, 5)

    def run(relu: str, composed: str) -> tuple[Tensor, ...]:
        layer = BatchRenorm1d(5, BrnParams(warmup_steps=1, **HYPER), relu=relu).train(training)  # type: ignore[arg-type]
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.7, 1.3]))
            layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4, -0.5]))
            layer.running_mean.copy_(rm)
            layer.running_var.copy_(rv)
            layer.steps.fill_(steps)
        x = x0.clone().requires_grad_()
        if composed == "input":
            y = layer(torch.relu(x))
        elif composed == "output":
            y = torch.relu(layer(x))
        else:
            y = layer(x)
        return (y, *grads(y, g, x, layer.weight, layer.bias), layer.running_mean, layer.running_var)

    for side in ("input", "output"):
        for fused, composed in zip(run(side, ""), run("none", side)):
            close(fused, composed, 1e-5)


def test_lazy_infers_num_features() -> None:
    x = torch.randn(8, 6)
    lazy = LazyBatchRenorm1d(BrnParams(warmup_steps=3), relu="input")
    y = lazy(x)
    assert type(lazy) is BatchRenorm1d and lazy.num_features == 6
    assert lazy.weight.shape == lazy.running_var.shape == (6,)
    assert lazy.steps.item() == 1 and lazy.relu == "input" and lazy.params.warmup_steps == 3
    eager = BatchRenorm1d(6, BrnParams(warmup_steps=3), relu="input")
    close(y, eager(x), 0)
    close(lazy.running_var, eager.running_var, 0)
    lazy_ens = LazyBatchRenorm1d(ensemble_size=2)
    lazy_ens(torch.randn(2, 8, 6))
    assert lazy_ens.bias.shape == lazy_ens.running_mean.shape == (2, 6)


def test_float32_under_bf16_autocast() -> None:
    layer = BatchRenorm1d(8, BrnParams(**HYPER))
    reference = BatchRenorm1d(8, BrnParams(**HYPER))
    linear = nn.Linear(4, 8)
    x = torch.randn(16, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        assert h.dtype == torch.bfloat16
        y = layer(h)
    assert y.dtype == layer.running_mean.dtype == layer.running_var.dtype == torch.float32
    close(y, reference(h.detach().float()), 1e-6)
    close(layer.running_var, reference.running_var, 1e-6)
    y.sum().backward()
    assert linear.weight.grad is not None and torch.isfinite(linear.weight.grad).all()


def test_compiled_fullgraph_matches_eager_across_warmup() -> None:
    """Three train calls (steps 0, 1 warm up; 2 renormalises) then an eval call, in one graph."""

    params = BrnParams(warmup_steps=2, momentum=0.1, eps=1e-3, r_max=1.5, d_max=0.5)

    def run(x: Tensor, w: Tensor, b: Tensor, rm: Tensor, rv: Tensor, steps: Tensor) -> Tensor:
        ys = [batch_renorm(x * (i + 1), w, b, rm, rv, steps, params, training=True, relu="output") for i in range(3)]
        ys.append(batch_renorm(x, w, b, rm, rv, steps, params, training=False, relu="output"))
        return torch.stack(ys)

    x0 = torch.randn(2, 33, 5) * 4 + 3
    g = torch.randn(4, 2, 33, 5)
    results = []
    for fn in (run, torch.compile(run, fullgraph=True)):
        x = x0.clone().requires_grad_()
        w = torch.linspace(0.5, 1.5, 10).view(2, 5).requires_grad_()
        b = torch.zeros(2, 5, requires_grad=True)
        state = (torch.zeros(2, 5), torch.ones(2, 5), torch.tensor(0))
        y = fn(x, w, b, *state)
        results.append((y, *grads(y, g, x, w, b), *state))
    for a, b in zip(*results):
        close(a, b, 1e-4)
    assert results[1][-1].item() == 3


def test_module_surface() -> None:
    layer = BatchRenorm1d(4, BrnParams(warmup_steps=10), ensemble_size=2, relu="output")
    text = repr(layer)
    for part in ("4,", "momentum=0.01", "eps=0.001", "r_max=3.0", "d_max=5.0", "warmup_steps=10",
                 "relu='output'", "ensemble_size=2", "impl='auto'"):
        assert part in text
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var", "steps"}
    layer.impl = "torch"
    assert layer(torch.randn(2, 3, 4)).shape == (2, 3, 4)


@pytest.mark.parametrize("relu", ["none", "input", "output"])
@pytest.mark.parametrize("steps", [0, 1], ids=["warmup", "renorm"])
@pytest.mark.parametrize("ensemble", [False, True])
def test_hand_written_backward_equals_reference(relu: str, steps: int, ensemble: bool) -> None:
    """impl='torch_fast' (the CPU default) against the composed reference: outputs, all grads, stats."""
    x0, rm0, rv0 = clipping_case(33, 10)
    if ensemble:
        x0, rm0, rv0 = torch.stack([x0, x0.flip(0) * 0.5]), torch.stack([rm0, rv0 - 1]), torch.stack([rv0, rv0 * 2])
    g = torch.randn(x0.shape)

    def run(impl: str) -> list[Tensor]:
        x = x0.clone().requires_grad_()
        w = torch.linspace(-1.5, 2.0, x0.numel() // x0.shape[-2]).view(rm0.shape).requires_grad_()
        b = torch.linspace(-0.5, 0.5, w.numel()).view(rm0.shape).requires_grad_()
        state = (rm0.clone(), rv0.clone(), torch.tensor(steps))
        y = batch_renorm(x, w, b, *state, BrnParams(warmup_steps=1, **HYPER), training=True, relu=relu, impl=impl)  # type: ignore[arg-type]
        return [y, *grads(y, g, x, w, b), *state]

    for fast, ref in zip(run("torch_fast"), run("torch")):
        close(fast, ref, 2e-5)


def test_hand_written_backward_gradcheck_float64() -> None:
    """Finite differences of the hand-written backward in float64, in warmup: with r and d
    stop-gradients, only r = 1, d = 0 makes BRN's gradient the true derivative."""
    from crossq_gpu.kernels.torch_brn import batch_renorm_train

    x0, rm, rv = clipping_case(12, 5)
    for relu in ("none", "input", "output"):
        def fn(x: Tensor, w: Tensor, b: Tensor, relu: str = relu) -> Tensor:
            state = (rm.double(), rv.double(), torch.tensor(0))
            return batch_renorm_train(x, w, b, *state, BrnParams(warmup_steps=1, **HYPER), relu=relu)  # type: ignore[arg-type]

        inputs = (x0.double().requires_grad_(), torch.linspace(0.5, 2.0, 5, dtype=torch.float64).requires_grad_(),
                  torch.linspace(-1.0, 1.0, 5, dtype=torch.float64).requires_grad_())
        assert torch.autograd.gradcheck(fn, inputs), relu
