"""Wrong or forbidden solutions to chapter 2's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py)."""

_VALUE_OK = {  # method bodies of a correct Value, to build mutants that break one thing at a time
    "mul": "        out = Value(self.data * other.data, (self, other), '*')\n"
           "        def _backward():\n"
           "            self.grad += other.data * out.grad\n"
           "            other.grad += self.data * out.grad\n"
           "        out._backward = _backward\n        return out\n",
    "backward": "        order, seen, stack = [], set(), [(self, False)]\n"
                "        while stack:\n"
                "            node, expanded = stack.pop()\n"
                "            if expanded:\n"
                "                order.append(node)\n"
                "            elif id(node) not in seen:\n"
                "                seen.add(id(node))\n"
                "                stack.append((node, True))\n"
                "                stack.extend((c, False) for c in node._prev if id(c) not in seen)\n"
                "        for node in order:\n"
                "            if node._prev:\n"
                "                node.grad = 0.0\n"
                "        self.grad += 1.0\n"
                "        for node in reversed(order):\n"
                "            node._backward()\n",
}


def _value(mul=_VALUE_OK["mul"], backward=_VALUE_OK["backward"], sigmoid=None):
    sigmoid = sigmoid or "        s = 1 / (1 + math.exp(-self.data)) if self.data >= 0 else " \
                         "math.exp(self.data) / (1 + math.exp(self.data))\n"
    return (
        "class Value:\n"
        "    def __init__(self, data, _prev=(), _op=''):\n"
        "        self.data = float(data); self.grad = 0.0; self._prev = tuple(_prev); self._op = _op\n"
        "        self._backward = lambda: None\n"
        "    def __add__(self, other):\n"
        "        other = other if isinstance(other, Value) else Value(other)\n"
        "        out = Value(self.data + other.data, (self, other), '+')\n"
        "        def _backward():\n"
        "            self.grad += out.grad\n"
        "            other.grad += out.grad\n"
        "        out._backward = _backward\n        return out\n"
        "    def __mul__(self, other):\n"
        "        other = other if isinstance(other, Value) else Value(other)\n" + mul +
        "    def __pow__(self, k):\n"
        "        out = Value(self.data ** k, (self,), 'pow')\n"
        "        def _backward():\n"
        "            self.grad += k * self.data ** (k - 1) * out.grad\n"
        "        out._backward = _backward\n        return out\n"
        "    def exp(self):\n"
        "        out = Value(math.exp(self.data), (self,), 'exp')\n"
        "        def _backward():\n"
        "            self.grad += out.data * out.grad\n"
        "        out._backward = _backward\n        return out\n"
        "    def tanh(self):\n"
        "        out = Value(math.tanh(self.data), (self,), 'tanh')\n"
        "        def _backward():\n"
        "            self.grad += (1 - out.data ** 2) * out.grad\n"
        "        out._backward = _backward\n        return out\n"
        "    def sigmoid(self):\n" + sigmoid +
        "        out = Value(s, (self,), 'sigmoid')\n"
        "        def _backward():\n"
        "            self.grad += out.data * (1 - out.data) * out.grad\n"
        "        out._backward = _backward\n        return out\n"
        "    def backward(self):\n" + backward +
        "    def __radd__(self, other): return self + other\n"
        "    def __rmul__(self, other): return self * other\n"
        "    def __neg__(self): return self * -1\n"
        "    def __sub__(self, other): return self + (-other)\n"
        "    def __rsub__(self, other): return other + (-self)\n"
        "    def __truediv__(self, other): return self * (other if isinstance(other, Value) else Value(other)) ** -1\n"
        "    def __rtruediv__(self, other): return Value(other) * self ** -1\n"
    )


_MODEL = ("def make_model(seed=0):\n"
          "    torch.manual_seed(seed)\n"
          "    return nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))\n")
_ACCURACY = ("def accuracy(model, X, y):\n"
             "    with torch.no_grad():\n"
             "        return (model(X).argmax(dim=-1) == y).float().mean().item()\n")

_RECURSIVE_SORT = (
    "        order, seen = [], set()\n"
    "        def visit(n):\n"
    "            if id(n) not in seen:\n"
    "                seen.add(id(n))\n"
    "                for c in n._prev:\n"
    "                    visit(c)\n"
    "                order.append(n)\n"
    "        visit(self)\n"
    "        for node in order:\n"
    "            if node._prev:\n"
    "                node.grad = 0.0\n"
    "        self.grad += 1.0\n"
    "        for node in reversed(order):\n"
    "            node._backward()\n"
)

MUTANTS = {
    "ex1-neuron": {
        "uses autograd": "def neuron_grads(x, w, b, y):\n"
                         "    w = w.clone().requires_grad_(); b = b.clone().requires_grad_()\n"
                         "    a = torch.sigmoid(w @ x + b)\n"
                         "    loss = -(y * torch.log(a) + (1 - y) * torch.log(1 - a))\n"
                         "    return torch.autograd.grad(loss, (w, b))",
        "sign flipped": "def neuron_grads(x, w, b, y):\n    a = torch.sigmoid(w @ x + b)\n    return (y - a) * x, y - a",
        "forgets x": "def neuron_grads(x, w, b, y):\n    a = torch.sigmoid(w @ x + b)\n    return (a - y) * w, a - y",
        "sigmoid derivative kept": "def neuron_grads(x, w, b, y):\n"
                                   "    a = torch.sigmoid(w @ x + b)\n"
                                   "    dz = (a - y) * a * (1 - a)\n    return dz * x, dz",
        "only y = 1": "def neuron_grads(x, w, b, y):\n    a = torch.sigmoid(w @ x + b)\n    return (a - 1) * x, a - 1",
    },
    "ex2-numerical-grad": {
        "forward difference": "def numerical_grad(f, x, h=1e-6):\n"
                              "    x = x.detach().clone(); flat = x.reshape(-1); g = torch.zeros_like(flat)\n"
                              "    base = f(x)\n"
                              "    for i in range(flat.numel()):\n"
                              "        old = flat[i].item(); flat[i] = old + h; g[i] = (f(x) - base) / h; flat[i] = old\n"
                              "    return g.reshape(x.shape)",
        "modifies x": "def numerical_grad(f, x, h=1e-6):\n"
                      "    flat = x.view(-1); g = torch.zeros_like(flat)\n"
                      "    for i in range(flat.numel()):\n"
                      "        flat[i] += h; up = f(x); flat[i] -= 2 * h; down = f(x)\n"
                      "        g[i] = (up - down) / (2 * h)\n"
                      "    return g.reshape(x.shape)",
        "forgets to restore": "def numerical_grad(f, x, h=1e-6):\n"
                              "    x = x.detach().clone(); flat = x.reshape(-1); g = torch.zeros_like(flat)\n"
                              "    for i in range(flat.numel()):\n"
                              "        old = flat[i].item(); flat[i] = old + h; up = f(x); flat[i] = old - h\n"
                              "        g[i] = (up - f(x)) / (2 * h)\n"
                              "    return g.reshape(x.shape)",
        "flat output": "def numerical_grad(f, x, h=1e-6):\n"
                       "    x = x.detach().clone(); flat = x.reshape(-1); g = torch.zeros_like(flat)\n"
                       "    for i in range(flat.numel()):\n"
                       "        old = flat[i].item(); flat[i] = old + h; up = f(x); flat[i] = old - h; down = f(x)\n"
                       "        flat[i] = old; g[i] = (up - down) / (2 * h)\n"
                       "    return g",
        "clone keeps the strides": "def numerical_grad(f, x, h=1e-6):\n"
                                   "    x = x.detach().clone(); flat = x.reshape(-1); g = torch.zeros_like(flat)\n"
                                   "    for i in range(flat.numel()):\n"
                                   "        old = flat[i].item(); flat[i] = old + h; up = f(x); flat[i] = old - h\n"
                                   "        down = f(x); flat[i] = old; g[i] = (up - down) / (2 * h)\n"
                                   "    return g.reshape(x.shape)",
        "ignores h": "def numerical_grad(f, x, h=1e-6):\n"
                     "    h = 1e-6; x = x.detach().clone(memory_format=torch.contiguous_format); flat = x.view(-1)\n"
                     "    g = torch.zeros_like(flat)\n"
                     "    for i in range(flat.numel()):\n"
                     "        old = flat[i].item(); flat[i] = old + h; up = f(x); flat[i] = old - h\n"
                     "        down = f(x); flat[i] = old; g[i] = (up - down) / (2 * h)\n"
                     "    return g.reshape(x.shape)",
        "always float64": "def numerical_grad(f, x, h=1e-6):\n"
                          "    x = x.detach().clone(memory_format=torch.contiguous_format); flat = x.view(-1)\n"
                          "    g = torch.zeros(flat.numel(), dtype=torch.float64)\n"
                          "    for i in range(flat.numel()):\n"
                          "        old = flat[i].item(); flat[i] = old + h; up = f(x); flat[i] = old - h\n"
                          "        down = f(x); flat[i] = old; g[i] = (up - down) / (2 * h)\n"
                          "    return g.reshape(x.shape)",
        "uses autograd": "def numerical_grad(f, x, h=1e-6):\n"
                         "    x = x.detach().clone().requires_grad_()\n"
                         "    return torch.autograd.grad(f(x), x)[0]",
    },
    "ex3-mlp-backward": {
        "uses autograd": "def mlp_backward(X, y, W1, b1, W2, b2):\n"
                         "    ps = [p.clone().requires_grad_() for p in (W1, b1, W2, b2)]\n"
                         "    loss = F.cross_entropy(torch.tanh(X @ ps[0].T + ps[1]) @ ps[2].T + ps[3], y)\n"
                         "    return dict(zip(['W1', 'b1', 'W2', 'b2'], torch.autograd.grad(loss, ps)))",
        "no 1/N": "def mlp_backward(X, y, W1, b1, W2, b2):\n"
                  "    C = W2.shape[0]; A1 = torch.tanh(X @ W1.T + b1); P = torch.softmax(A1 @ W2.T + b2, -1)\n"
                  "    dZ2 = P - F.one_hot(y, C).to(P.dtype); dZ1 = (dZ2 @ W2) * (1 - A1 ** 2)\n"
                  "    return {'W1': dZ1.T @ X, 'b1': dZ1.sum(0), 'W2': dZ2.T @ A1, 'b2': dZ2.sum(0)}",
        "forgets tanh'": "def mlp_backward(X, y, W1, b1, W2, b2):\n"
                         "    N, C = X.shape[0], W2.shape[0]; A1 = torch.tanh(X @ W1.T + b1)\n"
                         "    P = torch.softmax(A1 @ W2.T + b2, -1)\n"
                         "    dZ2 = (P - F.one_hot(y, C).to(P.dtype)) / N; dZ1 = dZ2 @ W2\n"
                         "    return {'W1': dZ1.T @ X, 'b1': dZ1.sum(0), 'W2': dZ2.T @ A1, 'b2': dZ2.sum(0)}",
        "transposed weights": "def mlp_backward(X, y, W1, b1, W2, b2):\n"
                              "    N, C = X.shape[0], W2.shape[0]; A1 = torch.tanh(X @ W1.T + b1)\n"
                              "    P = torch.softmax(A1 @ W2.T + b2, -1)\n"
                              "    dZ2 = (P - F.one_hot(y, C).to(P.dtype)) / N; dZ1 = (dZ2 @ W2) * (1 - A1 ** 2)\n"
                              "    return {'W1': (dZ1.T @ X).T, 'b1': dZ1.sum(0), 'W2': (dZ2.T @ A1).T, 'b2': dZ2.sum(0)}",
        "bias gradient averaged": "def mlp_backward(X, y, W1, b1, W2, b2):\n"
                                  "    N, C = X.shape[0], W2.shape[0]; A1 = torch.tanh(X @ W1.T + b1)\n"
                                  "    P = torch.softmax(A1 @ W2.T + b2, -1)\n"
                                  "    dZ2 = (P - F.one_hot(y, C).to(P.dtype)) / N; dZ1 = (dZ2 @ W2) * (1 - A1 ** 2)\n"
                                  "    return {'W1': dZ1.T @ X, 'b1': dZ1.mean(0), 'W2': dZ2.T @ A1, 'b2': dZ2.mean(0)}",
    },
    "ex4-gelu-function": {
        "calls F.gelu": "class GELUTanh(torch.autograd.Function):\n"
                        "    @staticmethod\n    def forward(ctx, x):\n"
                        "        ctx.save_for_backward(x); return F.gelu(x, approximate='tanh')\n"
                        "    @staticmethod\n    def backward(ctx, g):\n"
                        "        x, = ctx.saved_tensors; c = math.sqrt(2 / math.pi); t = torch.tanh(c * (x + 0.044715 * x ** 3))\n"
                        "        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2))",
        "autograd inside backward": "class GELUTanh(torch.autograd.Function):\n"
                                    "    @staticmethod\n    def forward(ctx, x):\n"
                                    "        ctx.save_for_backward(x); c = math.sqrt(2 / math.pi)\n"
                                    "        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3)))\n"
                                    "    @staticmethod\n    def backward(ctx, g):\n"
                                    "        x, = ctx.saved_tensors\n"
                                    "        with torch.enable_grad():\n"
                                    "            xr = x.detach().requires_grad_(); c = math.sqrt(2 / math.pi)\n"
                                    "            out = 0.5 * xr * (1 + torch.tanh(c * (xr + 0.044715 * xr ** 3)))\n"
                                    "            return torch.autograd.grad(out, xr, g)[0]",
        "ignores grad_output": "class GELUTanh(torch.autograd.Function):\n"
                               "    @staticmethod\n    def forward(ctx, x):\n"
                               "        ctx.save_for_backward(x); c = math.sqrt(2 / math.pi)\n"
                               "        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3)))\n"
                               "    @staticmethod\n    def backward(ctx, g):\n"
                               "        x, = ctx.saved_tensors; c = math.sqrt(2 / math.pi); t = torch.tanh(c * (x + 0.044715 * x ** 3))\n"
                               "        return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)",
        "product rule missing": "class GELUTanh(torch.autograd.Function):\n"
                                "    @staticmethod\n    def forward(ctx, x):\n"
                                "        ctx.save_for_backward(x); c = math.sqrt(2 / math.pi)\n"
                                "        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3)))\n"
                                "    @staticmethod\n    def backward(ctx, g):\n"
                                "        x, = ctx.saved_tensors; c = math.sqrt(2 / math.pi); t = torch.tanh(c * (x + 0.044715 * x ** 3))\n"
                                "        return g * 0.5 * (1 + t)",
        "ctx attribute": "class GELUTanh(torch.autograd.Function):\n"
                         "    @staticmethod\n    def forward(ctx, x):\n"
                         "        ctx.x = x; c = math.sqrt(2 / math.pi)\n"
                         "        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3)))\n"
                         "    @staticmethod\n    def backward(ctx, g):\n"
                         "        x = ctx.x; c = math.sqrt(2 / math.pi); t = torch.tanh(c * (x + 0.044715 * x ** 3))\n"
                         "        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2))",
        "exact GELU instead of tanh": "class GELUTanh(torch.autograd.Function):\n"
                                      "    @staticmethod\n    def forward(ctx, x):\n"
                                      "        ctx.save_for_backward(x); return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))\n"
                                      "    @staticmethod\n    def backward(ctx, g):\n"
                                      "        x, = ctx.saved_tensors\n"
                                      "        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))\n"
                                      "        return g * (cdf + x * torch.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi))",
    },
    "ex5-value": {
        "assigns instead of adding": _value(mul="        out = Value(self.data * other.data, (self, other), '*')\n"
                                                "        def _backward():\n"
                                                "            self.grad = other.data * out.grad\n"
                                                "            other.grad = self.data * out.grad\n"
                                                "        out._backward = _backward\n        return out\n"),
        "recursive sort": _value(backward=_RECURSIVE_SORT),
        "no topological sort": _value(backward="        self.grad += 1.0\n"
                                               "        stack, seen = [self], set()\n"
                                               "        while stack:\n"
                                               "            node = stack.pop()\n"
                                               "            if id(node) in seen:\n"
                                               "                continue\n"
                                               "            seen.add(id(node)); node._backward(); stack.extend(node._prev)\n"),
        "counts twice on a second call": _value(backward=_VALUE_OK["backward"].replace(
            "        for node in order:\n            if node._prev:\n                node.grad = 0.0\n", "")),
        "resets the leaves": _value(backward=_VALUE_OK["backward"].replace("if node._prev:", "if True:").replace(
            "        self.grad += 1.0\n", "        self.grad = 1.0\n")),
        "overflowing sigmoid": _value(sigmoid="        s = 1 / (1 + math.exp(-self.data))\n"),
        "breadth-first order": _value(backward="        from collections import deque\n"
                                                "        order, seen, q = [], {id(self)}, deque([self])\n"
                                                "        while q:\n"
                                                "            n = q.popleft(); order.append(n)\n"
                                                "            for c in n._prev:\n"
                                                "                if id(c) not in seen:\n"
                                                "                    seen.add(id(c)); q.append(c)\n"
                                                "        for n in order:\n"
                                                "            if n._prev:\n"
                                                "                n.grad = 0.0\n"
                                                "        self.grad += 1.0\n"
                                                "        for n in order:\n"
                                                "            n._backward()\n"),
    },
    "ex6-train": {
        "no zero_grad": _MODEL + "def train(model, X, y, steps=600, lr=0.01):\n"
                        "    opt = torch.optim.Adam(model.parameters(), lr=lr); losses = []\n"
                        "    for _ in range(steps):\n"
                        "        loss = F.cross_entropy(model(X), y); loss.backward(); opt.step(); losses.append(loss.item())\n"
                        "    return losses\n" + _ACCURACY,
        "loss after the step": _MODEL + "def train(model, X, y, steps=600, lr=0.01):\n"
                               "    opt = torch.optim.Adam(model.parameters(), lr=lr); losses = []\n"
                               "    for _ in range(steps):\n"
                               "        opt.zero_grad(); loss = F.cross_entropy(model(X), y); loss.backward(); opt.step()\n"
                               "        losses.append(F.cross_entropy(model(X), y).item())\n"
                               "    return losses\n" + _ACCURACY,
        "tensors not floats": _MODEL + "def train(model, X, y, steps=600, lr=0.01):\n"
                              "    opt = torch.optim.Adam(model.parameters(), lr=lr); losses = []\n"
                              "    for _ in range(steps):\n"
                              "        opt.zero_grad(); loss = F.cross_entropy(model(X), y); loss.backward(); opt.step()\n"
                              "        losses.append(loss)\n"
                              "    return losses\n" + _ACCURACY,
        "half the steps": _MODEL + "def train(model, X, y, steps=600, lr=0.01):\n"
                          "    opt = torch.optim.Adam(model.parameters(), lr=lr); losses = []\n"
                          "    for _ in range(steps // 2):\n"
                          "        opt.zero_grad(); loss = F.cross_entropy(model(X), y); loss.backward(); opt.step()\n"
                          "        losses += [loss.item()] * 2\n"
                          "    return losses\n" + _ACCURACY,
    },
}
