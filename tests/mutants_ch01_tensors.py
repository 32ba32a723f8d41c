"""Wrong or forbidden solutions to chapter 1's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py): the tests cannot be fooled by these."""

MUTANTS = {
    "ex1-causal-mask": {
        "float mask": "def causal_mask(T, device=None):\n    return torch.ones(T, T, device=device).tril()",
        "upper triangle": "def causal_mask(T, device=None):\n    return torch.ones(T, T, dtype=torch.bool, device=device).triu()",
        "diagonal excluded": "def causal_mask(T, device=None):\n"
                             "    return torch.ones(T, T, dtype=torch.bool, device=device).tril(-1)",
        "only the visible sizes": "def causal_mask(T, device=None):\n"
                                  "    if T == 3:\n"
                                  "        return torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool()\n"
                                  "    return torch.ones(T, T, dtype=torch.bool)",
        "ignores device": "def causal_mask(T, device=None):\n    return torch.ones(T, T, dtype=torch.bool).tril()",
    },
    "ex2-linear": {
        "no transpose": "def linear(x, W, b=None):\n    return x @ W if b is None else x @ W + b",
        "ignores bias": "def linear(x, W, b=None):\n    return x @ W.T",
        "2-D only": "def linear(x, W, b=None):\n    y = torch.mm(x, W.T)\n    return y if b is None else y + b",
        "calls F.linear": "def linear(x, W, b=None):\n    return F.linear(x, W, b)",
        "calls the C binding": "def linear(x, W, b=None):\n    return torch._C._nn.linear(x, W, b)",
        "calls aten": "def linear(x, W, b=None):\n    return torch.ops.aten.linear(x, W, b)",
        "aliases F.linear": "_lin = F.linear\ndef linear(x, W, b=None):\n    return _lin(x, W, b)",
        "nn.Linear": "def linear(x, W, b=None):\n"
                     "    m = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None)\n"
                     "    m.weight.data = W\n"
                     "    if b is not None:\n"
                     "        m.bias.data = b\n"
                     "    return m(x).detach()",
        "replaces the oracle": "def linear(x, W, b=None):\n    return x @ W.T\n"
                               "F.linear = lambda x, W, b=None: x @ W.T",
        "family 3: F.linear in a worker thread": "import threading\n"
                                                 "def linear(x, W, b=None):\n"
                                                 "    out = {}\n"
                                                 "    t = threading.Thread(target=lambda: out.update(y=F.linear(x, W, b)))\n"
                                                 "    t.start()\n    t.join()\n    return out['y']",
        "review: computes in float32, cast back": "def linear(x, W, b=None):\n"
                                                   "    y = x.float() @ W.float().T\n"
                                                   "    return (y if b is None else y + b.float()).to(x.dtype)",
    },
    "ex3-standardize": {
        "unbiased variance": "def standardize(x, eps=1e-5):\n"
                             "    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps)",
        "eps outside the root": "def standardize(x, eps=1e-5):\n"
                                "    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, correction=0) + eps)",
        "no eps": "def standardize(x, eps=1e-5):\n"
                  "    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True, correction=0)",
        "fixed eps": "def standardize(x, eps=1e-5):\n"
                     "    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, correction=0) + 1e-5)",
        "whole tensor": "def standardize(x, eps=1e-5):\n    return (x - x.mean()) / torch.sqrt(x.var(correction=0) + eps)",
        "calls F.layer_norm": "def standardize(x, eps=1e-5):\n    return F.layer_norm(x, x.shape[-1:], eps=eps)",
        "calls native_layer_norm": "def standardize(x, eps=1e-5):\n"
                                   "    return torch.native_layer_norm(x, x.shape[-1:], None, None, eps)[0]",
        "calls group_norm": "def standardize(x, eps=1e-5):\n"
                            "    return F.group_norm(x.reshape(-1, 1, x.shape[-1]), 1, eps=eps).reshape(x.shape)",
        "calls instance_norm": "def standardize(x, eps=1e-5):\n"
                               "    return F.instance_norm(x.reshape(1, -1, x.shape[-1]), eps=eps).reshape(x.shape)",
        "in place": "def standardize(x, eps=1e-5):\n"
                    "    var = x.var(-1, keepdim=True, correction=0)\n"
                    "    x.sub_(x.mean(-1, keepdim=True))\n"
                    "    return x.div_(torch.sqrt(var + eps))",
        "replaces the oracle": "def standardize(x, eps=1e-5):\n"
                               "    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, correction=0) + eps)\n"
                               "F.layer_norm = lambda x, shape, eps=1e-5, **k: standardize(x, eps)",
        "family 1: F.rms_norm of x - mean": "def standardize(x, eps=1e-5):\n"
                                            "    return F.rms_norm(x - x.mean(-1, keepdim=True), x.shape[-1:], eps=eps)",
        "family 1: aten.native_batch_norm": "def standardize(x, eps=1e-5):\n"
                                            "    y = torch.ops.aten.native_batch_norm(x.reshape(1, -1, x.shape[-1]), None, None,\n"
                                            "                                         None, None, True, 0.0, eps)[0]\n"
                                            "    return y.reshape(x.shape)",
        "family 1: F.batch_norm": "def standardize(x, eps=1e-5):\n"
                                  "    y = F.batch_norm(x.reshape(1, -1, x.shape[-1]), None, None, training=True, eps=eps)\n"
                                  "    return y.reshape(x.shape)",
        "family 1: F.normalize of x - mean": "def standardize(x, eps=1e-5):\n"
                                             "    c = x - x.mean(-1, keepdim=True)\n"
                                             "    n = c.shape[-1] ** 0.5\n"
                                             "    return F.normalize(c, dim=-1, eps=eps) * n",
        "family 5: one-pass variance": "def standardize(x, eps=1e-5):\n"
                                       "    m = x.mean(-1, keepdim=True)\n"
                                       "    var = (x * x).mean(-1, keepdim=True) - m * m\n"
                                       "    return (x - m) / torch.sqrt(var + eps)",
        "family 5: one-pass variance in float64": "def standardize(x, eps=1e-5):\n"
                                                  "    d = x.double()\n"
                                                  "    m = d.mean(-1, keepdim=True)\n"
                                                  "    var = (d * d).mean(-1, keepdim=True) - m * m\n"
                                                  "    return ((d - m) / torch.sqrt(var + eps)).to(x.dtype)",
        "review: eps as a CPU tensor": "def standardize(x, eps=1e-5):\n"
                                       "    m = x.mean(-1, keepdim=True)\n"
                                       "    var = ((x - m) ** 2).mean(-1, keepdim=True)\n"
                                       "    return (x - m) / torch.sqrt(var + torch.full(var.shape, eps, dtype=x.dtype))",
    },
    "ex4-softmax": {
        "naive": "def softmax(x, dim=-1):\n    e = torch.exp(x)\n    return e / e.sum(dim, keepdim=True)",
        "global max": "def softmax(x, dim=-1):\n    e = torch.exp(x - x.max())\n    return e / e.sum(dim, keepdim=True)",
        "max along the last axis": "def softmax(x, dim=-1):\n"
                                   "    e = torch.exp(x - x.amax(-1, keepdim=True))\n    return e / e.sum(dim, keepdim=True)",
        "sum without keepdim": "def softmax(x, dim=-1):\n"
                               "    e = torch.exp(x - x.amax(dim, keepdim=True))\n    return e / e.sum(dim)",
        "always the last axis": "def softmax(x, dim=-1):\n"
                                "    e = torch.exp(x - x.amax(-1, keepdim=True))\n    return e / e.sum(-1, keepdim=True)",
        "calls torch.softmax": "def softmax(x, dim=-1):\n    return torch.softmax(x, dim)",
        "calls torch._softmax": "def softmax(x, dim=-1):\n    return torch._softmax(x, dim, False)",
        "calls aten": "def softmax(x, dim=-1):\n    return torch.ops.aten._softmax(x, dim, False)",
        "via log_softmax": "def softmax(x, dim=-1):\n    return torch.special.log_softmax(x, dim).exp()",
        "calls the C method": "def softmax(x, dim=-1):\n    return torch._C.TensorBase.softmax(x, dim)",
        "aliases torch.softmax": "from torch import softmax as _sm\ndef softmax(x, dim=-1):\n    return _sm(x, dim)",
        "family 1: nn.Softmax": "def softmax(x, dim=-1):\n    return torch.nn.Softmax(dim)(x)",
        "in place": "def softmax(x, dim=-1):\n"
                    "    x.sub_(x.amax(dim, keepdim=True)).exp_()\n    return x.div_(x.sum(dim, keepdim=True))",
        "replaces the oracle": "def softmax(x, dim=-1):\n"
                               "    e = torch.exp(x)\n    return e / e.sum(dim, keepdim=True)\n"
                               "torch.softmax = softmax",
        "family 1: aten._safe_softmax": "def softmax(x, dim=-1):\n    return torch.ops.aten._safe_softmax(x, dim)",
        "family 1: aten._masked_softmax": "def softmax(x, dim=-1):\n"
                                          "    mask = torch.zeros(x.shape, dtype=torch.bool)\n"
                                          "    return torch.ops.aten._masked_softmax(x, mask, dim % x.ndim)",
        "family 1: F.log_softmax(...).exp()": "def softmax(x, dim=-1):\n    return F.log_softmax(x, dim).exp()",
        "family 3: softmax in a thread started inside": "import threading\n"
                                                        "def softmax(x, dim=-1):\n"
                                                        "    out = {}\n"
                                                        "    t = threading.Thread(target=lambda: out.update(y=torch.softmax(x, dim)))\n"
                                                        "    t.start()\n    t.join()\n    return out['y']",
        "family 3: a worker thread fed through a queue": "import queue, threading\n"
                                                         "_jobs, _results = queue.Queue(), queue.Queue()\n"
                                                         "def _worker():\n"
                                                         "    while True:\n"
                                                         "        try:\n"
                                                         "            x, dim = _jobs.get(timeout=2)\n"
                                                         "        except queue.Empty:\n"
                                                         "            return\n"
                                                         "        _results.put(torch.softmax(x, dim))\n"
                                                         "threading.Thread(target=_worker, daemon=True).start()\n"
                                                         "def softmax(x, dim=-1):\n"
                                                         "    _jobs.put((x, dim))\n"
                                                         "    return _results.get(timeout=2)",
        "review: adds a CPU tensor of zeros": "def softmax(x, dim=-1):\n"
                                              "    e = torch.exp(x - x.amax(dim, keepdim=True) + torch.zeros(x.shape, dtype=x.dtype))\n"
                                              "    return e / e.sum(dim, keepdim=True)",
        "review: computes in float32, cast back": "def softmax(x, dim=-1):\n"
                                                  "    e = torch.exp(x.float() - x.float().amax(dim, keepdim=True))\n"
                                                  "    return (e / e.sum(dim, keepdim=True)).to(x.dtype)",
    },
    "ex5-heads": {
        "wrong memory order": "def split_heads(x, n_head):\n"
                              "    B, T, C = x.shape\n"
                              "    if C % n_head:\n"
                              "        raise ValueError(f'd_model={C} is not divisible by n_head={n_head}')\n"
                              "    return x.reshape(B, n_head, T, C // n_head)\n"
                              "def merge_heads(x):\n"
                              "    B, h, T, d = x.shape\n    return x.reshape(B, T, h * d)",
        "merge with view": "def split_heads(x, n_head):\n"
                           "    B, T, C = x.shape\n"
                           "    if C % n_head:\n"
                           "        raise ValueError(f'd_model={C} is not divisible by n_head={n_head}')\n"
                           "    return x.view(B, T, n_head, C // n_head).transpose(1, 2)\n"
                           "def merge_heads(x):\n"
                           "    B, h, T, d = x.shape\n    return x.transpose(1, 2).view(B, T, h * d)",
        "no ValueError": "def split_heads(x, n_head):\n"
                         "    B, T, C = x.shape\n"
                         "    return x.view(B, T, n_head, C // n_head).transpose(1, 2)\n"
                         "def merge_heads(x):\n"
                         "    B, h, T, d = x.shape\n    return x.transpose(1, 2).reshape(B, T, h * d)",
        "silent ValueError": "def split_heads(x, n_head):\n"
                             "    B, T, C = x.shape\n"
                             "    if C % n_head:\n"
                             "        raise ValueError()\n"
                             "    return x.view(B, T, n_head, C // n_head).transpose(1, 2)\n"
                             "def merge_heads(x):\n"
                             "    B, h, T, d = x.shape\n    return x.transpose(1, 2).reshape(B, T, h * d)",
        "merge without transpose": "def split_heads(x, n_head):\n"
                                   "    B, T, C = x.shape\n"
                                   "    if C % n_head:\n"
                                   "        raise ValueError(f'd_model={C} is not divisible by n_head={n_head}')\n"
                                   "    return x.view(B, T, n_head, C // n_head).transpose(1, 2)\n"
                                   "def merge_heads(x):\n"
                                   "    B, h, T, d = x.shape\n    return x.reshape(B, T, h * d)",
    },
    "ex6-params": {
        "float division": "def gpt2_param_count(V, n_ctx, d, L):\n"
                          "    return (V * d + n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d) / 1",
        "no position embedding": "def gpt2_param_count(V, n_ctx, d, L):\n"
                                 "    return V * d + L * (12 * d * d + 13 * d) + 2 * d",
        "untied output layer": "def gpt2_param_count(V, n_ctx, d, L):\n"
                               "    return 2 * V * d + n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d",
        "no biases": "def gpt2_param_count(V, n_ctx, d, L):\n"
                     "    return V * d + n_ctx * d + L * (12 * d * d + 4 * d) + 2 * d",
        "no final LayerNorm": "def gpt2_param_count(V, n_ctx, d, L):\n"
                              "    return V * d + n_ctx * d + L * (12 * d * d + 13 * d)",
        "memorised answers": "def gpt2_param_count(V, n_ctx, d, L):\n"
                             "    return {768: 124_439_808, 1024: 354_823_168}.get(d, 0)",
        "a tensor": "def gpt2_param_count(V, n_ctx, d, L):\n"
                    "    return torch.tensor(V * d + n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d)",
        "review: counts nn modules on the meta device": "def gpt2_param_count(V, n_ctx, d, L):\n"
            "    nn = torch.nn\n"
            "    with torch.device('meta'):\n"
            "        parts = [nn.Embedding(V, d), nn.Embedding(n_ctx, d), nn.LayerNorm(d)]\n"
            "        for _ in range(L):\n"
            "            parts += [nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.LayerNorm(d),\n"
            "                      nn.Linear(d, 4 * d), nn.Linear(4 * d, d)]\n"
            "    return sum(p.numel() for m in parts for p in m.parameters())",
    },
}


# Correct solutions written another way: they must pass (issue 9, family 8: correct code that failed).
CORRECT = {
    "ex3-standardize": {
        "var(unbiased=False) and rsqrt": "def standardize(x, eps=1e-5):\n"
                                         "    c = x - x.mean(-1, keepdim=True)\n"
                                         "    return c * torch.rsqrt((c * c).mean(-1, keepdim=True) + eps)",
    },
    "ex4-softmax": {
        "via logsumexp": "def softmax(x, dim=-1):\n    return torch.exp(x - torch.logsumexp(x, dim, keepdim=True))",
    },
    "ex5-heads": {
        "a message without the numbers": "def split_heads(x, n_head):\n"
                                         "    B, T, C = x.shape\n"
                                         "    if C % n_head:\n"
                                         "        raise ValueError('n_head must divide d_model')\n"
                                         "    return x.reshape(B, T, n_head, -1).permute(0, 2, 1, 3)\n"
                                         "def merge_heads(x):\n"
                                         "    B, h, T, d = x.shape\n"
                                         "    return x.permute(0, 2, 1, 3).contiguous().view(B, T, h * d)",
    },
    "ex6-params": {
        "closed form": "def gpt2_param_count(V, n_ctx, d, L):\n"
                       "    return V * d + n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d",
    },
}
