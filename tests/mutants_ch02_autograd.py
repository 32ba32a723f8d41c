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

# ---------------------------------------------------------------------------------------------
# Families of issue 9: forbidden routes (1: a GELU by another name, 2: autograd in another mode,
# 3: another thread) and naive numerics (5).

_BCE = "F.binary_cross_entropy_with_logits"
_GELU_FORWARD = ("        c = math.sqrt(2 / math.pi)\n"
                 "        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3)))\n")
_GELU_LOCAL = ("        c = math.sqrt(2 / math.pi); t = torch.tanh(c * (x + 0.044715 * x ** 3))\n"
               "        local = 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)\n")


def _gelu(forward, backward):
    return ("class GELUTanh(torch.autograd.Function):\n"
            "    @staticmethod\n    def forward(ctx, x):\n" + forward +
            "    @staticmethod\n    def backward(ctx, grad_output):\n" + backward)


_OK_FORWARD = "        ctx.save_for_backward(x)\n" + _GELU_FORWARD
_GELU_F = "    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))\n"

_WORKER = ("import queue, threading, time\n"
           "_jobs = queue.Queue()\n"
           "def _serve():\n"
           "    while True:\n"
           "        try:\n"
           "            job, box = _jobs.get(timeout=0.3)\n"
           "        except queue.Empty:\n"
           "            return\n"
           "        box.append(job())\n"
           "threading.Thread(target=_serve, daemon=True).start()\n"
           "def _in_worker(job):\n"
           "    box = []\n"
           "    _jobs.put((job, box))\n"
           "    while not box:\n"
           "        time.sleep(0.001)\n"
           "    return box[0]\n")

_MLP_LOSS = ("def _loss(X, y, W1, b1, W2, b2):\n"
             "    return F.cross_entropy(torch.tanh(X @ W1.T + b1) @ W2.T + b2, y)\n")

MUTANTS["ex1-neuron"].update({
    "family 2: torch.func.jacfwd": "def neuron_grads(x, w, b, y):\n"
        f"    return torch.func.jacfwd(lambda w, b: {_BCE}(w @ x + b, y), argnums=(0, 1))(w, b)",
    "family 2: forward_ad dual numbers":
        "import torch.autograd.forward_ad as fwAD\n"
        "def neuron_grads(x, w, b, y):\n"
        "    dw = torch.zeros_like(w)\n"
        "    with fwAD.dual_level():\n"
        "        for i in range(w.numel()):\n"
        f"            wd = fwAD.make_dual(w, torch.eye(w.numel(), dtype=w.dtype)[i])\n"
        f"            dw[i] = fwAD.unpack_dual({_BCE}(wd @ x + b, y)).tangent\n"
        "        bd = fwAD.make_dual(b, torch.ones_like(b))\n"
        f"        db = fwAD.unpack_dual({_BCE}(w @ x + bd, y)).tangent\n"
        "    return dw, db",
    "family 2: functional.jacobian forward-mode": "def neuron_grads(x, w, b, y):\n"
        f"    return torch.autograd.functional.jacobian(lambda w, b: {_BCE}(w @ x + b, y), (w, b),\n"
        "                                              strategy='forward-mode', vectorize=True)",
    "family 2: torch.func.jvp": "def neuron_grads(x, w, b, y):\n"
        f"    f = lambda w, b: {_BCE}(w @ x + b, y)\n"
        "    dw = torch.stack([torch.func.jvp(lambda w: f(w, b), (w,), (e,))[1] for e in torch.eye(len(w), dtype=w.dtype)])\n"
        "    return dw, torch.func.jvp(lambda b: f(w, b), (b,), (torch.ones_like(b),))[1]",
    "family 2: torch.func.vjp": "def neuron_grads(x, w, b, y):\n"
        f"    out, pull = torch.func.vjp(lambda w, b: {_BCE}(w @ x + b, y), w, b)\n"
        "    return pull(torch.ones_like(out))",
    "family 2: run_backward under enable_grad": "def neuron_grads(x, w, b, y):\n"
        "    with torch.enable_grad():\n"
        "        wr, br = w.detach().clone(), b.detach().clone()\n"
        "        wr.requires_grad = True; br.requires_grad = True\n"
        f"        loss = {_BCE}(wr @ x + br, y)\n"
        "    return torch.autograd.Variable._execution_engine.run_backward(\n"
        "        (loss,), (torch.ones_like(loss),), False, False, (wr, br), False)",
    "family 3: autograd.grad in a thread it starts": "import threading\n"
        "def neuron_grads(x, w, b, y):\n"
        "    box = []\n"
        "    def work():\n"
        "        wr, br = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()\n"
        f"        box.append(torch.autograd.grad({_BCE}(wr @ x + br, y), (wr, br)))\n"
        "    t = threading.Thread(target=work); t.start(); t.join()\n"
        "    return box[0]",
    "family 3: autograd.grad in a worker started before the tests": _WORKER +
        "def neuron_grads(x, w, b, y):\n"
        "    def job():\n"
        "        wr, br = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()\n"
        f"        return torch.autograd.grad({_BCE}(wr @ x + br, y), (wr, br))\n"
        "    return _in_worker(job)",
    "family 5: exp(z) / (1 + exp(z))": "def neuron_grads(x, w, b, y):\n"
        "    z = w @ x + b; a = torch.exp(z) / (1 + torch.exp(z))\n"
        "    return (a - y) * x, a - y",
    "family 5: the chain rule not simplified": "def neuron_grads(x, w, b, y):\n"
        "    a = torch.sigmoid(w @ x + b)\n"
        "    dz = (-y / a + (1 - y) / (1 - a)) * a * (1 - a)\n"
        "    return dz * x, dz",
    "float64 whatever the input": "def neuron_grads(x, w, b, y):\n"
        "    x, w, b, y = x.double(), w.double(), b.double(), y.double()\n"
        "    a = torch.sigmoid(w @ x + b)\n"
        "    return (a - y) * x, a - y",
})

MUTANTS["ex2-numerical-grad"].update({
    "family 2: torch.func.jacfwd": "def numerical_grad(f, x, h=1e-6):\n    return torch.func.jacfwd(f)(x)",
    "family 2: torch.func.jvp per element": "def numerical_grad(f, x, h=1e-6):\n"
        "    g = torch.zeros(x.numel(), dtype=x.dtype)\n"
        "    for i in range(x.numel()):\n"
        "        e = torch.zeros(x.numel(), dtype=x.dtype); e[i] = 1\n"
        "        g[i] = torch.func.jvp(f, (x,), (e.reshape(x.shape),))[1]\n"
        "    return g.reshape(x.shape)",
    "family 2: run_backward under enable_grad": "def numerical_grad(f, x, h=1e-6):\n"
        "    with torch.enable_grad():\n"
        "        xr = x.detach().clone(); xr.requires_grad = True; out = f(xr)\n"
        "    return torch.autograd.Variable._execution_engine.run_backward(\n"
        "        (out,), (torch.ones_like(out),), False, False, (xr,), False)[0]",
})

_MLP_GRADS_OF = ("    g = {}(_loss, argnums=(2, 3, 4, 5))(X, y, W1, b1, W2, b2)\n"
                 "    return dict(zip(['W1', 'b1', 'W2', 'b2'], g))")
MUTANTS["ex3-mlp-backward"].update({
    "family 2: torch.func.jacfwd": _MLP_LOSS + "def mlp_backward(X, y, W1, b1, W2, b2):\n" +
        _MLP_GRADS_OF.format("torch.func.jacfwd"),
    "family 2: torch.func.grad (reverse mode, functional)": _MLP_LOSS + "def mlp_backward(X, y, W1, b1, W2, b2):\n" +
        _MLP_GRADS_OF.format("torch.func.grad"),
    "family 2: functional.jacobian forward-mode": _MLP_LOSS + "def mlp_backward(X, y, W1, b1, W2, b2):\n"
        "    g = torch.autograd.functional.jacobian(lambda *p: _loss(X, y, *p), (W1, b1, W2, b2),\n"
        "                                           strategy='forward-mode', vectorize=True)\n"
        "    return dict(zip(['W1', 'b1', 'W2', 'b2'], g))",
    "family 2: torch.func.vjp": _MLP_LOSS + "def mlp_backward(X, y, W1, b1, W2, b2):\n"
        "    out, pull = torch.func.vjp(lambda *p: _loss(X, y, *p), W1, b1, W2, b2)\n"
        "    return dict(zip(['W1', 'b1', 'W2', 'b2'], pull(torch.ones_like(out))))",
    "family 2: run_backward under enable_grad": _MLP_LOSS + "def mlp_backward(X, y, W1, b1, W2, b2):\n"
        "    with torch.enable_grad():\n"
        "        ps = [p.detach().clone() for p in (W1, b1, W2, b2)]\n"
        "        for p in ps:\n"
        "            p.requires_grad = True\n"
        "        loss = _loss(X, y, *ps)\n"
        "    g = torch.autograd.Variable._execution_engine.run_backward(\n"
        "        (loss,), (torch.ones_like(loss),), False, False, tuple(ps), False)\n"
        "    return dict(zip(['W1', 'b1', 'W2', 'b2'], g))",
    "family 3: autograd.grad in a worker started before the tests": _WORKER + _MLP_LOSS +
        "def mlp_backward(X, y, W1, b1, W2, b2):\n"
        "    def job():\n"
        "        ps = [p.detach().clone().requires_grad_() for p in (W1, b1, W2, b2)]\n"
        "        return dict(zip(['W1', 'b1', 'W2', 'b2'], torch.autograd.grad(_loss(X, y, *ps), ps)))\n"
        "    return _in_worker(job)",
})

MUTANTS["ex4-gelu-function"].update({
    "family 1: aten.gelu_backward": _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors\n"
        "        return torch.ops.aten.gelu_backward(grad_output, x, approximate='tanh')\n"),
    "family 1: F.gelu inside backward (differences)": _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors; h = 1e-5\n"
        "        d = (F.gelu(x + h, approximate='tanh') - F.gelu(x - h, approximate='tanh')) / (2 * h)\n"
        "        return grad_output * d\n"),
    "family 1: nn.GELU in forward": _gelu(
        "        ctx.save_for_backward(x)\n        return nn.GELU(approximate='tanh')(x)\n",
        "        x, = ctx.saved_tensors\n" + _GELU_LOCAL + "        return grad_output * local\n"),
    "family 1: aten.gelu in forward": _gelu(
        "        ctx.save_for_backward(x)\n        return torch.ops.aten.gelu.default(x, approximate='tanh')\n",
        "        x, = ctx.saved_tensors\n" + _GELU_LOCAL + "        return grad_output * local\n"),
    "family 2: torch.func.vjp inside backward": "def _g(x):\n" + _GELU_F + _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors\n"
        "        return torch.func.vjp(_g, x)[1](grad_output)[0]\n"),
    "family 2: torch.func.jvp inside backward": "def _g(x):\n" + _GELU_F + _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors\n"
        "        return grad_output * torch.func.jvp(_g, (x,), (torch.ones_like(x),))[1]\n"),
    "family 2: forward_ad inside backward": "import torch.autograd.forward_ad as fwAD\n"
        "def _g(x):\n" + _GELU_F + _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors\n"
        "        with fwAD.dual_level():\n"
        "            return grad_output * fwAD.unpack_dual(_g(fwAD.make_dual(x, torch.ones_like(x)))).tangent\n"),
    "family 2: run_backward inside backward": "def _g(x):\n" + _GELU_F + _gelu(_OK_FORWARD,
        "        x, = ctx.saved_tensors\n"
        "        with torch.enable_grad():\n"
        "            xr = x.detach().clone(); xr.requires_grad = True; out = _g(xr)\n"
        "        return torch.autograd.Variable._execution_engine.run_backward(\n"
        "            (out,), (grad_output,), False, False, (xr,), False)[0]\n"),
})

MUTANTS["ex5-value"].update({
    "family 5: exp(x) / (1 + exp(x))": _value(sigmoid="        s = math.exp(self.data) / (1 + math.exp(self.data))\n"),
})

# Correct solutions written another way: each must pass the visible and hidden tests
# (tests/test_mutants.py), so that the tests do not demand one way of writing an answer.
CORRECT = {
    "ex1-neuron": {
        "family 5: 1 / (1 + exp(-z)) on tensors (exp overflows to inf, 1 / inf = 0)":
            "def neuron_grads(x, w, b, y):\n"
            "    a = 1 / (1 + torch.exp(-(w @ x + b)))\n"
            "    return (a - y) * x, a - y",
        "a stable sigmoid by cases": "def neuron_grads(x, w, b, y):\n"
            "    z = w @ x + b\n"
            "    a = torch.where(z >= 0, 1 / (1 + torch.exp(-z.abs())), torch.exp(-z.abs()) / (1 + torch.exp(-z.abs())))\n"
            "    return (a - y) * x, a - y",
    },
    "ex4-gelu-function": {
        "family 8: needs_input_grad, as in PyTorch's 'Extending PyTorch'": _gelu(_OK_FORWARD,
            "        x, = ctx.saved_tensors\n"
            "        grad_input = None\n"
            "        if ctx.needs_input_grad[0]:\n" + _GELU_LOCAL.replace("        ", "            ") +
            "            grad_input = grad_output * local\n"
            "        return grad_input\n"),
        "returns a 1-tuple": _gelu(_OK_FORWARD,
            "        x, = ctx.saved_tensors\n" + _GELU_LOCAL + "        return (grad_output * local,)\n"),
    },
    "ex5-value": {
        "sigmoid through tanh": _value(sigmoid="        s = 0.5 * (1 + math.tanh(self.data / 2))\n"),
    },
}

# Wrong answers found in review (an attacker and a learner).
MUTANTS["ex1-neuron"].update({
    "review: a rebuilt from a Python float (float32)": "def neuron_grads(x, w, b, y):\n"
        "    a = torch.tensor(torch.sigmoid(w @ x + b).item())\n"
        "    return (a - y) * x, a - y",
})

MUTANTS["ex5-value"].update({
    "review: wraps torch tensors and calls torch's backward": (
        "class Value:\n"
        "    def __init__(self, data, _prev=(), _op=''):\n"
        "        self.t = data if isinstance(data, torch.Tensor) else \\\n"
        "            torch.tensor(float(data), dtype=torch.float64, requires_grad=True)\n"
        "    @property\n"
        "    def data(self): return self.t.item()\n"
        "    @property\n"
        "    def grad(self): return 0.0 if self.t.grad is None else self.t.grad.item()\n"
        "    @staticmethod\n"
        "    def _t(o): return o.t if isinstance(o, Value) else o\n"
        "    def __add__(self, o): return Value(self.t + Value._t(o))\n"
        "    def __radd__(self, o): return Value(Value._t(o) + self.t)\n"
        "    def __mul__(self, o): return Value(self.t * Value._t(o))\n"
        "    def __rmul__(self, o): return Value(Value._t(o) * self.t)\n"
        "    def __pow__(self, k): return Value(self.t ** k)\n"
        "    def exp(self): return Value(torch.exp(self.t))\n"
        "    def tanh(self): return Value(torch.tanh(self.t))\n"
        "    def sigmoid(self): return Value(torch.sigmoid(self.t))\n"
        "    def backward(self): self.t.backward(retain_graph=True)\n"
        "    def __neg__(self): return self * -1\n"
        "    def __sub__(self, o): return self + (-o)\n"
        "    def __rsub__(self, o): return o + (-self)\n"
        "    def __truediv__(self, o): return self * (o if isinstance(o, Value) else Value(o)) ** -1\n"
        "    def __rtruediv__(self, o): return Value(o) * self ** -1\n"),
})

MUTANTS["ex6-train"].update({
    "review: a new Adam every 10 steps (the losses differ only after step 3)":
        _MODEL + "def train(model, X, y, steps=600, lr=0.01):\n"
        "    losses = []\n"
        "    for i in range(steps):\n"
        "        if i % 10 == 0:\n"
        "            opt = torch.optim.Adam(model.parameters(), lr=lr)\n"
        "        opt.zero_grad(); loss = F.cross_entropy(model(X), y); loss.backward(); opt.step()\n"
        "        losses.append(loss.item())\n"
        "    return losses\n" + _ACCURACY,
})
