"""Reference solutions for 2. Autograd and backpropagation (自動微分と誤差逆伝播法).

Generated from chapters/ch02_autograd/ch02_autograd.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def neuron_grads(x, w, b, y):
    """Gradients of the binary cross-entropy of sigmoid(w . x + b) against y, with
    respect to w and b."""
    a = torch.sigmoid(w @ x + b)
    dz = a - y
    return dz * x, dz


def numerical_grad(f, x, h=1e-6):
    """Central-difference gradient of the scalar function f at x (same shape as x)."""
    x = x.detach().clone(memory_format=torch.contiguous_format)
    flat = x.view(-1)                        # a view: writing flat[i] changes x
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad.reshape(x.shape)


def mlp_backward(X, y, W1, b1, W2, b2):
    """Gradients of the mean cross-entropy of a tanh MLP with respect to W1, b1, W2,
    b2."""
    N, C = X.shape[0], W2.shape[0]
    Z1 = X @ W1.T + b1  # (N, H)
    A1 = torch.tanh(Z1)  # (N, H)
    Z2 = A1 @ W2.T + b2  # (N, C)
    P = torch.softmax(Z2, dim=-1)  # (N, C)
    dZ2 = (P - F.one_hot(y, C).to(P.dtype)) / N
    dW2 = dZ2.T @ A1
    db2 = dZ2.sum(0)
    dA1 = dZ2 @ W2
    dZ1 = dA1 * (1 - A1**2)
    dW1 = dZ1.T @ X
    db1 = dZ1.sum(0)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


class GELUTanh(torch.autograd.Function):
    """GELU, tanh approximation, with a hand-written backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1 + torch.tanh(u))

    @staticmethod
    def backward(ctx, grad_output):
        x, = ctx.saved_tensors
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x ** 3))
        local = 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)
        return grad_output * local


class Value:
    """A scalar that records the operations applied to it, for reverse-mode autodiff."""

    def __init__(self, data, _prev=(), _op=""):
        self.data = float(data)
        self.grad = 0.0
        self._prev = tuple(_prev)
        self._op = _op
        self._backward = lambda: None

    def __repr__(self):
        return f"Value(data={self.data:.4g}, grad={self.grad:.4g})"

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, k):
        assert isinstance(k, (int, float)), "only constant exponents"
        out = Value(self.data**k, (self,), f"**{k}")

        def _backward():
            self.grad += k * self.data ** (k - 1) * out.grad

        out._backward = _backward
        return out

    def exp(self):
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward():
            self.grad += out.data * out.grad

        out._backward = _backward
        return out

    def tanh(self):
        out = Value(math.tanh(self.data), (self,), "tanh")

        def _backward():
            self.grad += (1 - out.data**2) * out.grad

        out._backward = _backward
        return out

    def sigmoid(self):
        s = (
            1 / (1 + math.exp(-self.data))
            if self.data >= 0
            else math.exp(self.data) / (1 + math.exp(self.data))
        )
        out = Value(s, (self,), "sigmoid")

        def _backward():
            self.grad += out.data * (1 - out.data) * out.grad

        out._backward = _backward
        return out

    def backward(self):
        """Add d(self)/d(leaf) to .grad of every leaf this Value depends on, like
        PyTorch."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative depth-first post-order
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend(
                    (child, False) for child in node._prev if id(child) not in seen
                )
        for node in order:  # intermediate results start from zero on every call
            if node._prev:
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):
            node._backward()

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __truediv__(self, other):
        return self * (other if isinstance(other, Value) else Value(other)) ** -1

    def __rtruediv__(self, other):
        return Value(other) * self**-1


def two_spirals(n_per_class, noise=0.15, turns=1.75, seed=0):
    """(2 * n, 2) points on two interleaved spirals and their labels (0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    t = (
        torch.rand(n_per_class, generator=g) ** 0.5 * turns * 2 * math.pi
    )  # angle, denser at the centre
    r = t / (turns * 2 * math.pi) * 3  # radius grows with the angle
    arm = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)  # (n, 2)
    X = torch.cat([arm, -arm]) + noise * torch.randn(2 * n_per_class, 2, generator=g)
    y = torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).long()
    return X, y


X_train, y_train = two_spirals(300, seed=0)
X_test, y_test = two_spirals(300, seed=1)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )


def train(model, X, y, steps=600, lr=0.01):
    """Full-batch Adam on the cross-entropy; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def accuracy(model, X, y):
    with torch.no_grad():
        return (model(X).argmax(dim=-1) == y).float().mean().item()
