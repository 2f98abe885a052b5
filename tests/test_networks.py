"""StackedLinear: n independent Linear layers, whichever matmul path the width takes."""

import pytest
import torch
import torch.nn.functional as F

from crossq_gpu.networks import StackedLinear


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
