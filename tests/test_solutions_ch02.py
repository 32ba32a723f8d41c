"""Unit tests of solutions/ch02_autograd.py beyond the exercises' own tests."""
import math

import torch
import torch.nn.functional as F

from solutions.ch02_autograd import GELUTanh, Value, mlp_backward, neuron_grads, numerical_grad


def test_numerical_grad_checks_the_hand_written_gradients():
    """The course's gradient checker agrees with the other hand-written gradients of the chapter."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3))
    b, y = b[0], torch.tensor(1.0, dtype=torch.float64)
    loss = lambda w_: F.binary_cross_entropy_with_logits(w_ @ x + b, y)
    torch.testing.assert_close(numerical_grad(loss, w), neuron_grads(x, w, b, y)[0])
    X, labels = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0, 2])
    W1, b1, W2, b2 = (torch.randn(s, generator=g, dtype=torch.float64) for s in [(5, 3), (5,), (3, 5), (3,)])
    f = lambda W: F.cross_entropy(torch.tanh(X @ W.T + b1) @ W2.T + b2, labels)
    torch.testing.assert_close(numerical_grad(f, W1), mlp_backward(X, labels, W1, b1, W2, b2)["W1"])


def test_numerical_grad_accepts_non_contiguous_input():
    x = torch.randn(3, 4, dtype=torch.float64).T
    torch.testing.assert_close(numerical_grad(lambda t: (t ** 3).sum(), x), 3 * x ** 2)


def test_gelu_function_gradcheck_and_gradgrad_free():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GELUTanh.apply, (x,))
    torch.testing.assert_close(GELUTanh.apply(x), F.gelu(x, approximate="tanh"))


def test_value_builds_a_neuron_like_pytorch():
    xs, ws, b = [1.5, -2.0], [0.3, 0.8], 0.1
    vx, vw, vb = [Value(v) for v in xs], [Value(v) for v in ws], Value(b)
    out = (sum((wi * xi for wi, xi in zip(vw, vx)), vb)).tanh()
    out.backward()
    tw = torch.tensor(ws, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    torch.tanh(tw @ torch.tensor(xs, dtype=torch.float64) + tb).backward()
    assert math.isclose(out.data, math.tanh(0.3 * 1.5 - 0.8 * 2.0 + 0.1))
    assert all(math.isclose(v.grad, t) for v, t in zip(vw, tw.grad.tolist()))
    assert math.isclose(vb.grad, tb.grad.item())


def test_value_arithmetic_helpers():
    a = Value(3.0)
    c = 1 - a / 2 + 4 / a - (-a)
    c.backward()
    assert math.isclose(c.data, 1 - 1.5 + 4 / 3 + 3)
    assert math.isclose(a.grad, -0.5 - 4 / 9 + 1)


def test_neuron_grads_stay_finite_at_large_z():
    """torch.sigmoid saturates without overflow: at |z| = 1000 the gradient is (0 or 1) - y."""
    for dtype, z in [(torch.float64, 1000.0), (torch.float64, -1000.0), (torch.float32, 100.0), (torch.float32, -100.0)]:
        x, w = torch.tensor([z / 2, z / 2], dtype=dtype), torch.ones(2, dtype=dtype)
        dw, db = neuron_grads(x, w, torch.tensor(0.0, dtype=dtype), torch.tensor(0.25, dtype=dtype))
        a = 1.0 if z > 0 else 0.0
        torch.testing.assert_close(db, torch.tensor(a - 0.25, dtype=dtype))
        torch.testing.assert_close(dw, (a - 0.25) * x)


def test_gelu_backward_called_directly_returns_grad_output_times_the_derivative():
    class Ctx:
        needs_input_grad = (True,)

        def save_for_backward(self, *tensors):
            self.saved_tensors = tensors

    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    ctx, g = Ctx(), torch.linspace(1, -1, 9, dtype=torch.float64)
    GELUTanh.forward(ctx, x)
    xr = x.clone().requires_grad_()
    want, = torch.autograd.grad(F.gelu(xr, approximate="tanh"), xr, g)
    torch.testing.assert_close(GELUTanh.backward(ctx, g), want)
