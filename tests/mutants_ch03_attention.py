"""Wrong or forbidden solutions to chapter 3's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py)."""
from mutant_tools import edit as _edit


def _scores(expr):
    return f"def attention_scores(Q, K):\n    return {expr}"


_SDPA_OK = (
    "def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
    "    if is_causal:\n"
    "        if attn_mask is not None:\n"
    "            raise ValueError('pass either attn_mask or is_causal=True, not both')\n"
    "        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()\n"
    "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n"
    "        scores = attention_scores(q, k) + attn_mask\n"
    "        dead = (scores == float('-inf')).all(dim=-1, keepdim=True)\n"
    "        weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)\n"
    "    else:\n"
    "        weights = attention_weights(q, k, attn_mask)\n"
    "    return weights @ v\n"
)
# the head of a solution that hands the work to one of PyTorch's attention functions
_FORBIDDEN = ("def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
              "    if is_causal and attn_mask is not None:\n"
              "        raise ValueError('pass either attn_mask or is_causal=True, not both')\n")
_FLOAT_MASK = ("    if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
               "        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(~attn_mask, float('-inf'))\n")
_CAUSAL = "torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()"
_SCORES = "scores = attention_scores(q, k) + attn_mask"
_FLOAT = "torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)"
# the float path as the old text suggested it: right output, nan gradients on a row of -inf, nan hidden
_NAN_TO_NUM = "torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)"

# a correct attention_weights; mutants below change one thing in it
_WEIGHTS_OK = (
    "def attention_weights(Q, K, mask=None):\n"
    "    scores = attention_scores(Q, K)\n"
    "    if mask is None:\n"
    "        return torch.softmax(scores, dim=-1)\n"
    "    scores = scores.masked_fill(~mask, float('-inf'))\n"
    "    dead = ~mask.any(dim=-1, keepdim=True)\n"
    "    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)\n"
)
_EYE = "torch.eye(K.shape[-2], dtype=Q.dtype).expand(*K.shape[:-1], K.shape[-2])"

# family 3: the forbidden work done in another thread, started in three ways
_THREADED = (
    "import threading\n"
    "_start = threading.Thread.start            # saved before the tests replace it\n"
    "_sdpa = F.scaled_dot_product_attention\n"
    "def _in_thread(fn, start=None):\n"
    "    box = []\n"
    "    t = threading.Thread(target=lambda: box.append(fn()))\n"
    "    (start or threading.Thread.start)(t)\n"
    "    t.join()\n"
    "    return box[0]\n"
)
_WORKER = (
    "import queue, threading\n"
    "_jobs = queue.Queue()\n"
    "_sdpa = F.scaled_dot_product_attention\n"
    "def _serve():\n"
    "    while True:\n"
    "        try:\n"
    "            fn, box, done = _jobs.get(timeout=2)\n"
    "        except queue.Empty:\n"
    "            return\n"
    "        box.append(fn())\n"
    "        done.set()\n"
    "threading.Thread(target=_serve, daemon=True).start()      # started when the cell runs\n"
    "def _in_thread(fn, start=None):\n"
    "    box, done = [], threading.Event()\n"
    "    _jobs.put((fn, box, done))\n"
    "    done.wait()\n"
    "    return box[0]\n"
)

_SA_OK = (
    "class SelfAttention(nn.Module):\n"
    "    def __init__(self, config):\n"
    "        super().__init__()\n"
    "        self.config = config\n"
    "        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"
    "        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"
    "        self.W_V = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"
    "    def forward(self, x, attn_mask=None):\n"
    "        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)\n"
    "        if self.config.causal:\n"
    "            causal = causal_mask(x.shape[-2], device=x.device)\n"
    "            attn_mask = causal if attn_mask is None else attn_mask & causal\n"
    "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n"
)

_LEAK_OK = (
    "def first_leak(f, x, atol=1e-6):\n"
    "    with torch.no_grad():\n"
    "        y = f(x)\n"
    "        for t in range(x.shape[1] - 1):\n"
    "            x2 = x.clone()\n"
    "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n"
    "            if not torch.allclose(f(x2)[:, :t + 1], y[:, :t + 1], atol=atol):\n"
    "                return t\n"
    "    return None\n"
)

# Cheats that reassign a test helper in the notebook's namespace. They fail because check_tensor and
# check_untouched call the `check` of solutions.ch01_tensors, which a reassignment in the notebook does
# not reach. (Reassigning check_tensor too, or that module's check, is not stopped: see the chapter's
# review notes. Those cheats are not listed here, because they pass.)
_NO_CHECK = "\ncheck = lambda *args, **kwargs: None\n"
_NO_CALL = "\ncall = lambda fn, *args, **kwargs: fn()\n"

# A cheat that reads the expected result out of the tests: from the frame of check_tensor, which
# receives it before it calls the learner's function, or from a global named `oracle`.
_STEAL = (
    "import inspect\n"
    "def _stolen(fits):\n"
    "    f = inspect.currentframe()\n"
    "    while f is not None:\n"
    "        if f.f_code.co_name == 'check_tensor' and 'expected' in f.f_locals and fits(f.f_locals['expected']):\n"
    "            return f.f_locals['expected']\n"
    "        f = f.f_back\n"
    "    o = globals().get('oracle')\n"
    "    return o if o is not None and fits(o) else None\n"
)

MUTANTS = {
    "ex1-scores": {
        "no sqrt": _scores("Q @ K.transpose(-2, -1)"),
        "divides by d_k": _scores("Q @ K.transpose(-2, -1) / Q.shape[-1]"),
        "K.T": _scores("Q @ K.T / math.sqrt(Q.shape[-1])"),
        "scaled by T_k": _scores("Q @ K.transpose(-2, -1) / math.sqrt(K.shape[-2])"),
        "scaled by T_q": _scores("Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-2])"),
        "keys times queries": _scores("K @ Q.transpose(-2, -1) / math.sqrt(Q.shape[-1])"),
        "sqrt of the first axis": _scores("Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[0])"),
        "2-D only": _scores("torch.mm(Q, K.t()) / math.sqrt(Q.shape[-1])"),
        "transposes the first two axes": _scores("Q @ K.transpose(0, 1) / math.sqrt(Q.shape[-1])"),
        "float32 result": _scores("(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])).float()"),
        "scales Q in place": "def attention_scores(Q, K):\n"
                             "    Q /= math.sqrt(Q.shape[-1])\n"
                             "    return Q @ K.transpose(-2, -1)",
        "only the visible sizes": "def attention_scores(Q, K):\n"
                                  "    if Q.shape[-1] == 4:\n"
                                  "        return Q @ K.transpose(-2, -1) / 2\n"
                                  "    return Q @ K.transpose(-2, -1)",
        "no sqrt, check switched off": _scores("Q @ K.transpose(-2, -1)") + _NO_CHECK,
        "K.T, call and check switched off": _scores("Q @ K.T / math.sqrt(Q.shape[-1])") + _NO_CHECK + _NO_CALL,
    },
    "ex2-padding": {
        "<=": "def padding_mask(lengths, T):\n"
              "    return (torch.arange(T, device=lengths.device) <= lengths[:, None])[:, None, :]",
        "inverted": "def padding_mask(lengths, T):\n"
                    "    return (torch.arange(T, device=lengths.device) >= lengths[:, None])[:, None, :]",
        "shape (B, T)": "def padding_mask(lengths, T):\n"
                        "    return torch.arange(T, device=lengths.device) < lengths[:, None]",
        "shape (B, T, 1)": "def padding_mask(lengths, T):\n"
                           "    return (torch.arange(T, device=lengths.device) < lengths[:, None])[:, :, None]",
        "arange on the cpu": "def padding_mask(lengths, T):\n"
                             "    return (torch.arange(T) < lengths[:, None])[:, None, :]",
        "arange on the cpu, lengths moved": "def padding_mask(lengths, T):\n"
                                            "    return (torch.arange(T) < lengths.cpu()[:, None])[:, None, :]",
        "int mask": "def padding_mask(lengths, T):\n"
                    "    return (torch.arange(T, device=lengths.device) < lengths[:, None])[:, None, :].long()",
        "float mask": "def padding_mask(lengths, T):\n"
                      "    return (torch.arange(T, device=lengths.device) < lengths[:, None])[:, None, :].float()",
        "python loops": "def padding_mask(lengths, T):\n"
                        "    return torch.tensor([[[j < int(n) for j in range(T)]] for n in lengths])",
        "longest sequence instead of T": "def padding_mask(lengths, T):\n"
                                         "    T = int(lengths.max())\n"
                                         "    return (torch.arange(T, device=lengths.device) < lengths[:, None])[:, None, :]",
        "axes swapped": "def padding_mask(lengths, T):\n"
                        "    return (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :])[:, None, :]",
        "lengths unsqueezed in place": "def padding_mask(lengths, T):\n"
                                       "    lengths.unsqueeze_(-1)\n"
                                       "    return (torch.arange(T, device=lengths.device) < lengths)[:, None, :]",
        "no empty sequence": "def padding_mask(lengths, T):\n"
                             "    n = lengths.clamp(min=1)\n"
                             "    return (torch.arange(T, device=lengths.device) < n[:, None])[:, None, :]",
        "steals the expected result": _STEAL +
                                      "def padding_mask(lengths, T):\n"
                                      "    s = _stolen(lambda e: tuple(e.shape) == (len(lengths), 1, T))\n"
                                      "    return s if s is not None else torch.ones(len(lengths), 1, T, dtype=torch.bool,"
                                      " device=lengths.device)",
        "inverted, check switched off": "def padding_mask(lengths, T):\n"
                                        "    return (torch.arange(T, device=lengths.device) >= lengths[:, None])"
                                        "[:, None, :]" + _NO_CHECK,
    },
    "ex3-weights": {
        "ignores the mask": "def attention_weights(Q, K, mask=None):\n"
                            "    return torch.softmax(attention_scores(Q, K), dim=-1)",
        "mask after the softmax": "def attention_weights(Q, K, mask=None):\n"
                                  "    w = torch.softmax(attention_scores(Q, K), dim=-1)\n"
                                  "    return w if mask is None else w * mask",
        "nan in fully masked rows": "def attention_weights(Q, K, mask=None):\n"
                                    "    scores = attention_scores(Q, K)\n"
                                    "    if mask is not None:\n"
                                    "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                                    "    return torch.softmax(scores, dim=-1)",
        "mask convention inverted": "def attention_weights(Q, K, mask=None):\n"
                                    "    scores = attention_scores(Q, K)\n"
                                    "    if mask is not None:\n"
                                    "        scores = scores.masked_fill(mask, float('-inf'))\n"
                                    "    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)",
        "softmax over the queries": "def attention_weights(Q, K, mask=None):\n"
                                    "    scores = attention_scores(Q, K)\n"
                                    "    if mask is not None:\n"
                                    "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                                    "    return torch.nan_to_num(torch.softmax(scores, dim=-2), nan=0.0)",
        "softmax over axis 1": "def attention_weights(Q, K, mask=None):\n"
                               "    scores = attention_scores(Q, K)\n"
                               "    if mask is not None:\n"
                               "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                               "    return torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)",
        "-1e9 instead of -inf": "def attention_weights(Q, K, mask=None):\n"
                                "    scores = attention_scores(Q, K)\n"
                                "    if mask is not None:\n"
                                "        scores = scores.masked_fill(~mask, -1e9)\n"
                                "    return torch.softmax(scores, dim=-1)",
        "mask multiplies the scores": "def attention_weights(Q, K, mask=None):\n"
                                      "    scores = attention_scores(Q, K)\n"
                                      "    if mask is not None:\n"
                                      "        scores = scores * mask\n"
                                      "    return torch.softmax(scores, dim=-1)",
        "unscaled scores": "def attention_weights(Q, K, mask=None):\n"
                           "    scores = Q @ K.transpose(-2, -1)\n"
                           "    if mask is not None:\n"
                           "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                           "    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)",
        "float32 softmax": "def attention_weights(Q, K, mask=None):\n"
                           "    scores = attention_scores(Q, K)\n"
                           "    if mask is not None:\n"
                           "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                           "    return torch.nan_to_num(torch.softmax(scores, dim=-1, dtype=torch.float32), nan=0.0)",
        "inverts the mask in place": "def attention_weights(Q, K, mask=None):\n"
                                     "    scores = attention_scores(Q, K)\n"
                                     "    if mask is not None:\n"
                                     "        scores = scores.masked_fill(mask.logical_not_(), float('-inf'))\n"
                                     "    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)",
        "zeros where any key is masked": "def attention_weights(Q, K, mask=None):\n"
                                         "    w = torch.softmax(attention_scores(Q, K), dim=-1)\n"
                                         "    if mask is not None:\n"
                                         "        w = w.masked_fill(~mask.all(-1, keepdim=True), 0.0)\n"
                                         "    return w",
        "family 7: torch.nan_to_num after the softmax (the old text)":
            "def attention_weights(Q, K, mask=None):\n"
            "    scores = attention_scores(Q, K)\n"
            "    if mask is not None:\n"
            "        scores = scores.masked_fill(~mask, float('-inf'))\n"
            "    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)",
        "family 7: zeros where the weights are nan": _edit(_WEIGHTS_OK, "    dead = ~mask.any(dim=-1, keepdim=True)\n"
                                                                       "    return torch.softmax(scores.masked_fill(dead, 0.0), "
                                                                       "dim=-1).masked_fill(dead, 0.0)\n",
                                                           "    w = torch.softmax(scores, dim=-1)\n"
                                                           "    return torch.where(w.isnan(), 0.0, w)\n"),
        "family 7: nan_to_num also without a mask": _edit(_WEIGHTS_OK, "        return torch.softmax(scores, dim=-1)\n",
                                                          "        return torch.softmax(scores, dim=-1).nan_to_num(0.0)\n"),
        "family 7: dead rows from the weights": _edit(_WEIGHTS_OK, "    dead = ~mask.any(dim=-1, keepdim=True)\n"
                                                                   "    return torch.softmax(scores.masked_fill(dead, 0.0), "
                                                                   "dim=-1).masked_fill(dead, 0.0)\n",
                                                      "    w = torch.softmax(scores, dim=-1)\n"
                                                      "    return w.masked_fill(w.isnan().any(-1, keepdim=True), 0.0)\n"),
        "family 4: F.scaled_dot_product_attention with the identity as V":
            "def attention_weights(Q, K, mask=None):\n"
            "    return F.scaled_dot_product_attention(Q, K, " + _EYE + ", attn_mask=mask)",
        "family 4: the ORACLE with the identity as V":
            "def attention_weights(Q, K, mask=None):\n"
            "    return ORACLE.scaled_dot_product_attention(Q, K, " + _EYE + ", attn_mask=mask)",
        "family 4: the weights of the test's own oracle": "def attention_weights(Q, K, mask=None):\n"
                                                          "    return weights_oracle(Q, K, mask)",
        "family 1: aten._safe_softmax": _edit(_WEIGHTS_OK, "    return torch.softmax(scores.masked_fill(dead, 0.0), "
                                                           "dim=-1).masked_fill(dead, 0.0)\n",
                                              "    return torch.ops.aten._safe_softmax(scores, -1)\n"),
        "family 1: torch._safe_softmax": _edit(_WEIGHTS_OK, "    return torch.softmax(scores.masked_fill(dead, 0.0), "
                                                            "dim=-1).masked_fill(dead, 0.0)\n",
                                               "    return torch._safe_softmax(scores, -1)\n"),
        "family 1: torch._masked_softmax": _edit(_WEIGHTS_OK, "    return torch.softmax(scores.masked_fill(dead, 0.0), "
                                                              "dim=-1).masked_fill(dead, 0.0)\n",
                                                 "    w = torch._masked_softmax(scores, ~mask.expand_as(scores), -1)\n"
                                                 "    return w.masked_fill(dead, 0.0)\n"),
        "family 3: F.scaled_dot_product_attention in a worker thread":
            _THREADED + "def attention_weights(Q, K, mask=None):\n"
                        "    return _in_thread(lambda: F.scaled_dot_product_attention(Q, K, " + _EYE + ", attn_mask=mask))",
        "family 3: a thread started with a saved Thread.start":
            _THREADED + "def attention_weights(Q, K, mask=None):\n"
                        "    return _in_thread(lambda: _sdpa(Q, K, " + _EYE + ", attn_mask=mask), _start)",
        "family 3: a worker thread started when the cell runs":
            _WORKER + "def attention_weights(Q, K, mask=None):\n"
                      "    return _in_thread(lambda: _sdpa(Q, K, " + _EYE + ", attn_mask=mask))",
        "catches AssertionError": "def attention_weights(Q, K, mask=None):\n"
                                    "    try:\n"
                                    "        scores = attention_scores(Q, K)\n"
                                    "        if mask is not None:\n"
                                    "            scores = scores.masked_fill(~mask, float('-inf'))\n"
                                    "        return torch.softmax(scores, dim=-1)\n"
                                    "    except AssertionError:\n"
                                    "        return torch.zeros(1)",
    },
    "ex4-sdpa": {
        "calls F.scaled_dot_product_attention": _FORBIDDEN + "    return F.scaled_dot_product_attention(q, k, v, attn_mask, "
                                                               "is_causal=is_causal)",
        "aliases F.scaled_dot_product_attention": "_sdpa = F.scaled_dot_product_attention\n" + _FORBIDDEN +
                                                  "    return _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)",
        "calls the C binding": _FORBIDDEN + "    return torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask, "
                                            "is_causal=is_causal)",
        "calls the ORACLE": _FORBIDDEN + "    return ORACLE.scaled_dot_product_attention(q, k, v, attn_mask, "
                                         "is_causal=is_causal)",
        "looks up the oracle by name": _FORBIDDEN + "    return globals()['sdpa'](q, k, v, attn_mask, is_causal=is_causal)",
        "family 1: calls the math kernel": _FORBIDDEN + _FLOAT_MASK +
                                 "    out = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask, 0.0, "
                                 "is_causal)[0]\n"
                                 "    return torch.nan_to_num(out, nan=0.0)",
        "family 1: _scaled_dot_product_flash_attention_for_cpu": _FORBIDDEN + _FLOAT_MASK +
                                      "    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])\n"
                                      "    d = max(q.shape[-1], v.shape[-1])\n"
                                      "    four = lambda t: F.pad(t, (0, d - t.shape[-1])).expand(*lead, t.shape[-2], d)"
                                      ".reshape(-1, 1, t.shape[-2], d)\n"
                                      "    if attn_mask is not None:\n"
                                      "        attn_mask = attn_mask.expand(*lead, q.shape[-2], k.shape[-2])"
                                      ".reshape(-1, 1, q.shape[-2], k.shape[-2])\n"
                                      "    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(\n"
                                      "        four(q), four(k), four(v), 0.0, is_causal, attn_mask=attn_mask, "
                                      "scale=q.shape[-1] ** -0.5)[0]\n"
                                      "    return out[..., :v.shape[-1]].reshape(*lead, q.shape[-2], v.shape[-1])",
        "catches the switch-off":
            _FORBIDDEN +
            "    try:\n"
            "        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)\n"
            "    except AssertionError:\n"
            "        return attention_weights(q, k) @ v",
        "escapes the function mode": _FORBIDDEN +
                                     "    with torch._C.DisableTorchFunction():\n"
                                     "        return F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)",
        "steals the expected result": _STEAL + _FORBIDDEN +
                                      "    s = _stolen(lambda e: e.shape[-2:] == (q.shape[-2], v.shape[-1]) and "
                                      "e.dtype == q.dtype)\n"
                                      "    return s if s is not None else attention_weights(q, k) @ v",
        "no ValueError": _edit(_SDPA_OK, "        if attn_mask is not None:\n"
                                         "            raise ValueError('pass either attn_mask or is_causal=True, not both')\n",
                               ""),
        "AssertionError instead of ValueError": _edit(_SDPA_OK, "raise ValueError(", "raise AssertionError("),
        "RuntimeError instead of ValueError": _edit(_SDPA_OK, "raise ValueError(", "raise RuntimeError("),
        "masks combined instead of an error": _edit(_SDPA_OK, "        if attn_mask is not None:\n"
                                                              "            raise ValueError('pass either attn_mask or "
                                                              "is_causal=True, not both')\n"
                                                              "        attn_mask = " + _CAUSAL,
                                                    "        causal = " + _CAUSAL + "\n"
                                                    "        attn_mask = causal if attn_mask is None else "
                                                    "attn_mask & causal"),
        "is_causal ignored": _edit(_SDPA_OK, "    if is_causal:\n", "    if is_causal and False:\n"),
        "triu instead of tril": _edit(_SDPA_OK, _CAUSAL, _CAUSAL.replace("tril()", "triu()")),
        "diagonal excluded": _edit(_SDPA_OK, _CAUSAL, _CAUSAL.replace("tril()", "tril(-1)")),
        "square causal mask from T_q": _edit(_SDPA_OK, _CAUSAL, _CAUSAL.replace("k.shape[-2]", "q.shape[-2]")),
        "square causal mask from T_k": _edit(_SDPA_OK, _CAUSAL, _CAUSAL.replace("q.shape[-2]", "k.shape[-2]")),
        "bottom-right causal": _edit(_SDPA_OK, _CAUSAL,
                                     _CAUSAL.replace("tril()", "tril(diagonal=k.shape[-2] - q.shape[-2])")),
        "chapter 1's square causal_mask": _edit(_SDPA_OK, _CAUSAL, "causal_mask(q.shape[-2], device=q.device)"),
        "float mask used with masked_fill": _edit(_SDPA_OK, "    if attn_mask is not None and attn_mask.dtype != "
                                                            "torch.bool:\n",
                                                  "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n"
                                                  "        attn_mask = attn_mask != float('-inf')\n"
                                                  "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n"),
        "float mask made bool": _edit(_SDPA_OK, "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n",
                                      "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n"
                                      "        attn_mask = attn_mask.bool()\n"
                                      "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n"),
        "bool mask added to the scores": _edit(_SDPA_OK, "    if attn_mask is not None and attn_mask.dtype != torch.bool:\n",
                                               "    if attn_mask is not None:\n"),
        "float mask leaves nan": _edit(_SDPA_OK, _FLOAT, "torch.softmax(scores, dim=-1)"),
        "float mask multiplies the scores": _edit(_SDPA_OK, _SCORES, _SCORES.replace(" + attn_mask", " * attn_mask")),
        "float mask added after the softmax": _edit(_SDPA_OK, _FLOAT,
                                                    "torch.softmax(attention_scores(q, k), dim=-1) + attn_mask"),
        "float mask subtracted": _edit(_SDPA_OK, _SCORES, _SCORES.replace(" + attn_mask", " - attn_mask")),
        "float mask, softmax over the queries": _edit(_SDPA_OK, _FLOAT, _FLOAT.replace("dim=-1", "dim=-2")),
        "float mask unscaled": _edit(_SDPA_OK, _SCORES, _SCORES.replace("attention_scores(q, k)", "q @ k.mT")),
        "family 7: nan_to_num after the softmax (float mask)": _edit(_SDPA_OK, _FLOAT, _NAN_TO_NUM),
        "family 7: nan_to_num on the output": _edit(_SDPA_OK, _FLOAT, "torch.softmax(scores, dim=-1)").replace(
            "    return weights @ v\n", "    return torch.nan_to_num(weights @ v, nan=0.0)\n"),
        "family 7: zeros where the weights are nan (float mask)": _edit(_SDPA_OK, _FLOAT,
                                                                         "torch.softmax(scores, dim=-1)"
                                                                         ".masked_fill(torch.softmax(scores, dim=-1)"
                                                                         ".isnan(), 0.0)"),
        "family 7: dead rows found after the softmax": _edit(_SDPA_OK, _FLOAT, "torch.softmax(scores, dim=-1)").replace(
            "    return weights @ v\n", "    return torch.where(weights.isnan().all(-1, keepdim=True), 0.0, weights) @ v\n"),
        "family 7: the old reference (nan_to_num in both paths)":
            _edit(_SDPA_OK, _FLOAT, _NAN_TO_NUM).replace(
                "        weights = attention_weights(q, k, attn_mask)\n",
                "        s = attention_scores(q, k)\n"
                "        s = s if attn_mask is None else s.masked_fill(~attn_mask, float('-inf'))\n"
                "        weights = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)\n"),
        "family 1: aten._safe_softmax for the float mask": _edit(_SDPA_OK, _FLOAT,
                                                                 "torch.ops.aten._safe_softmax(scores, -1)"),
        "family 1: torch._safe_softmax for the float mask": _edit(_SDPA_OK, _FLOAT, "torch._safe_softmax(scores, -1)"),
        "family 3: F.scaled_dot_product_attention in a worker thread":
            _THREADED + _FORBIDDEN + "    return _in_thread(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask, "
                                     "is_causal=is_causal))",
        "family 3: a thread started with a saved Thread.start":
            _THREADED + _FORBIDDEN + "    return _in_thread(lambda: _sdpa(q, k, v, attn_mask, is_causal=is_causal), _start)",
        "family 3: a worker thread started when the cell runs":
            _WORKER + _FORBIDDEN + "    return _in_thread(lambda: _sdpa(q, k, v, attn_mask, is_causal=is_causal))",
        "no sqrt anywhere": "def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
                            "    return torch.softmax(q @ k.mT, dim=-1) @ v",
        "times k instead of v": _edit(_SDPA_OK, "    return weights @ v\n", "    return weights @ k\n"),
        "weights transposed": _edit(_SDPA_OK, "    return weights @ v\n", "    return weights.mT @ v\n"),
        "detached": _edit(_SDPA_OK, "    return weights @ v\n", "    return (weights @ v).detach()\n"),
        "detached weights": _edit(_SDPA_OK, "    return weights @ v\n", "    return weights.detach() @ v\n"),
        "under no_grad": _edit(_SDPA_OK, "    return weights @ v\n",
                               "    with torch.no_grad():\n        return weights @ v\n"),
        "scales q in place": "def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
                             "    q /= math.sqrt(q.shape[-1])\n"
                             "    if is_causal:\n"
                             "        if attn_mask is not None:\n"
                             "            raise ValueError('pass either attn_mask or is_causal=True, not both')\n"
                             "        attn_mask = " + _CAUSAL + "\n"
                             "    scores = q @ k.transpose(-2, -1)\n"
                             "    if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
                             "        scores = scores.masked_fill(~attn_mask, float('-inf'))\n"
                             "    elif attn_mask is not None:\n"
                             "        scores = scores + attn_mask\n"
                             "    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0) @ v\n",
        "float mask added in place": _edit(_SDPA_OK, _SCORES, "scores = attn_mask.add_(attention_scores(q, k))"),
        "check switched off": "def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
                              "    return attention_weights(q, k, attn_mask) @ v\n" + _NO_CHECK,
    },
    "ex5-self-attention": {
        "one shared Linear": _edit(_SA_OK, "        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n",
                                   "        self.W_K = self.W_Q\n"),
        "one fused Linear": "class SelfAttention(nn.Module):\n"
                            "    def __init__(self, config):\n"
                            "        super().__init__()\n"
                            "        self.config = config\n"
                            "        self.W_QKV = nn.Linear(config.d_model, 3 * config.d_k, bias=config.bias)\n"
                            "    def forward(self, x, attn_mask=None):\n"
                            "        Q, K, V = self.W_QKV(x).chunk(3, dim=-1)\n"
                            "        if self.config.causal:\n"
                            "            causal = causal_mask(x.shape[-2], device=x.device)\n"
                            "            attn_mask = causal if attn_mask is None else attn_mask & causal\n"
                            "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n",
        "bias ignored": _SA_OK.replace("bias=config.bias", "bias=False"),
        "always a bias": _SA_OK.replace("bias=config.bias", "bias=True"),
        "W_V to d_model": _edit(_SA_OK, "self.W_V = nn.Linear(config.d_model, config.d_k,",
                                "self.W_V = nn.Linear(config.d_model, config.d_model,"),
        "Linear's arguments swapped": _SA_OK.replace("nn.Linear(config.d_model, config.d_k,",
                                                     "nn.Linear(config.d_k, config.d_model,"),
        "wrong order": _edit(_SA_OK, "        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"
                                     "        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n",
                             "        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"
                             "        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)\n"),
        "raw Parameters": "class SelfAttention(nn.Module):\n"
                          "    def __init__(self, config):\n"
                          "        super().__init__()\n"
                          "        self.config = config\n"
                          "        for name in ('W_Q', 'W_K', 'W_V'):\n"
                          "            setattr(self, name, nn.Parameter(torch.randn(config.d_model, config.d_k) * 0.1))\n"
                          "    def forward(self, x, attn_mask=None):\n"
                          "        Q, K, V = x @ self.W_Q, x @ self.W_K, x @ self.W_V\n"
                          "        if self.config.causal:\n"
                          "            causal = causal_mask(x.shape[-2], device=x.device)\n"
                          "            attn_mask = causal if attn_mask is None else attn_mask & causal\n"
                          "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n",
        "masks combined with |": _edit(_SA_OK, "attn_mask & causal", "attn_mask | causal"),
        "attn_mask dropped when causal": _edit(_SA_OK, "attn_mask = causal if attn_mask is None else attn_mask & causal",
                                               "attn_mask = causal"),
        "never causal": _edit(_SA_OK, "        if self.config.causal:\n", "        if False:\n"),
        "always causal": _edit(_SA_OK, "        if self.config.causal:\n", "        if True:\n"),
        "triu": _edit(_SA_OK, "causal = causal_mask(x.shape[-2], device=x.device)",
                      "causal = causal_mask(x.shape[-2], device=x.device).T"),
        "causal mask from d_model": _edit(_SA_OK, "causal_mask(x.shape[-2]", "causal_mask(x.shape[-1]"),
        "causal mask from the batch size": _edit(_SA_OK, "causal_mask(x.shape[-2]", "causal_mask(x.shape[0]"),
        "is_causal and attn_mask": _edit(_SA_OK, "        if self.config.causal:\n"
                                                 "            causal = causal_mask(x.shape[-2], device=x.device)\n"
                                                 "            attn_mask = causal if attn_mask is None else attn_mask & causal\n"
                                                 "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n",
                                         "        if self.config.causal and attn_mask is None:\n"
                                         "            return scaled_dot_product_attention(Q, K, V, is_causal=True)\n"
                                         "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n"),
        "queries and keys swapped": _edit(_SA_OK, "scaled_dot_product_attention(Q, K, V,",
                                          "scaled_dot_product_attention(K, Q, V,"),
        "values are the queries": _edit(_SA_OK, "scaled_dot_product_attention(Q, K, V,",
                                        "scaled_dot_product_attention(Q, K, Q,"),
        "padding mask over the queries": _edit(_SA_OK, "        if self.config.causal:\n",
                                               "        if attn_mask is not None:\n"
                                               "            attn_mask = attn_mask.transpose(-2, -1)\n"
                                               "        if self.config.causal:\n"),
        "fresh layers in forward": _edit(_SA_OK, "        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)\n",
                                         "        c = self.config\n"
                                         "        Q, K, V = (nn.Linear(c.d_model, c.d_k, bias=c.bias)(x) for _ in range(3))\n"),
        "unscaled": _edit(_SA_OK, "        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)\n",
                          "        return scaled_dot_product_attention(Q * math.sqrt(Q.shape[-1]), K, V, "
                          "attn_mask=attn_mask)\n"),
        "normalises x in place": _edit(_SA_OK, "        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)\n",
                                       "        x /= x.norm(dim=-1, keepdim=True) + 1e-6\n"
                                       "        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)\n"),
        "|, check switched off": _edit(_SA_OK, "attn_mask & causal", "attn_mask | causal") + _NO_CHECK,
    },
    "ex6-first-leak": {
        "family 6: perturbs only token t+1": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                         "            x2[:, t + 1] = torch.randn_like(x2[:, t + 1])\n"),
        "perturbs from t": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                 "            x2[:, t:] = torch.randn_like(x2[:, t:])\n"),
        "compares the full outputs": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2), y"),
        "compares only batch 0": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2)[0, :t + 1], y[0, :t + 1]"),
        "perturbs only batch 0": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                       "            x2[0, t + 1:] = torch.randn_like(x2[0, t + 1:])\n"),
        "compares positions before t": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2)[:, :t], y[:, :t]"),
        "compares up to t+1": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2)[:, :t + 2], y[:, :t + 2]"),
        "compares the wrong axis": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2)[:t + 1], y[:t + 1]"),
        "modifies x in place": _edit(_LEAK_OK, "            x2 = x.clone()\n", "            x2 = x\n"),
        "restores x only when it leaks": _edit(_LEAK_OK, "            x2 = x.clone()\n",
                                       "            x2 = x\n            saved = x.clone()\n").replace(
            "                return t\n", "                x.copy_(saved)\n                return t\n"),
        "returns t + 1": _edit(_LEAK_OK, "                return t\n", "                return t + 1\n"),
        "returns -1": _edit(_LEAK_OK, "    return None\n", "    return -1\n"),
        "returns False": _edit(_LEAK_OK, "    return None\n", "    return False\n"),
        "returns the last leak": _edit(_LEAK_OK, "range(x.shape[1] - 1)", "reversed(range(x.shape[1] - 1))"),
        "loops over the width": _edit(_LEAK_OK, "range(x.shape[1] - 1)", "range(x.shape[-1] - 1)"),
        "loops over the batch": _edit(_LEAK_OK, "range(x.shape[1] - 1)", "range(x.shape[0] - 1)"),
        "starts at t = 1": _edit(_LEAK_OK, "range(x.shape[1] - 1)", "range(1, x.shape[1] - 1)"),
        "never leaks": "def first_leak(f, x, atol=1e-6):\n    return None",
        "always leaks at 0": "def first_leak(f, x, atol=1e-6):\n    return 0",
        "tolerance far too loose": _edit(_LEAK_OK, "atol=atol)", "rtol=1e6, atol=atol)"),
        "family 6: perturbs only feature 0": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                                   "            x2[:, t + 1:, 0] = torch.randn_like(x2[:, t + 1:, 0])\n"),
        "family 6: perturbs only the first half of the features":
            _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                  "            h = x.shape[-1] // 2\n"
                  "            x2[:, t + 1:, :h] = torch.randn_like(x2[:, t + 1:, :h])\n"),
        "family 6: perturbs only the last token": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                                        "            x2[:, -1] = torch.randn_like(x2[:, -1])\n"),
        "family 6: perturbs tokens t+1 and t+2 only": _edit(_LEAK_OK, "            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])\n",
                                                            "            x2[:, t + 1:t + 3] = torch.randn_like(x2[:, t + 1:t + 3])\n"),
    },
}


# Found in review (an attacker's wrong answers), one per hole they showed.
_W3 = '''_sdpa = F.scaled_dot_product_attention          # taken when the cell runs
class _Weights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Q, K, mask):
        ctx.save_for_backward(Q, K)
        ctx.mask = mask
        s = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
        if mask is None:
            return torch.softmax(s, dim=-1)
        s = s.masked_fill(~mask, float('-inf'))
        dead = ~mask.any(dim=-1, keepdim=True)
        return torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    @staticmethod
    def backward(ctx, g):                       # honest forward, PyTorch's attention in the backward
        Q, K = ctx.saved_tensors
        with torch.enable_grad():
            Q, K = Q.detach().requires_grad_(), K.detach().requires_grad_()
            eye = torch.eye(K.shape[-2], dtype=Q.dtype).expand(*K.shape[:-1], K.shape[-2])
            gq, gk = torch.autograd.grad(_sdpa(Q, K, eye, attn_mask=ctx.mask), (Q, K), g)
        return gq, gk, None
def attention_weights(Q, K, mask=None):
    return _Weights.apply(Q, K, mask)
'''
_A4 = '''_sdpa = F.scaled_dot_product_attention          # taken when the cell runs
class _Attend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, is_causal):
        ctx.save_for_backward(q, k, v)
        ctx.args = (attn_mask, is_causal)
        if is_causal:
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float('-inf'))
        elif attn_mask is not None:
            scores = scores + attn_mask
        dead = (scores == float('-inf')).all(dim=-1, keepdim=True)
        return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0) @ v
    @staticmethod
    def backward(ctx, g):                       # honest forward, PyTorch's attention in the backward
        q, k, v = ctx.saved_tensors
        mask, causal = ctx.args
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            grads = torch.autograd.grad(_sdpa(q, k, v, attn_mask=mask, is_causal=causal), (q, k, v), g)
        return (*grads, None, None)
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    if is_causal and attn_mask is not None:
        raise ValueError('pass either attn_mask or is_causal=True, not both')
    return _Attend.apply(q, k, v, attn_mask, is_causal)
'''
_REVIEW = {
    'ex1-scores': {
        'review: float32 computation, float64 result': '''\
def attention_scores(Q, K):
    return (Q.float() @ K.float().transpose(-2, -1) / math.sqrt(Q.shape[-1])).to(Q.dtype)
''',
    },
    'ex3-weights': {
        'review: rebinds FORBID after the first call': '''\
def attention_weights(Q, K, mask=None):
    g = globals()
    if g.get('FORBID'):                      # first call runs under the switch-off: do it honestly
        g['FORBID'] = ()                     # ... and switch it off for every later call
        scores = attention_scores(Q, K)
        if mask is not None:
            scores = scores.masked_fill(~mask, float('-inf'))
        return torch.softmax(scores, dim=-1)
    eye = torch.eye(K.shape[-2], dtype=Q.dtype).expand(*K.shape[:-1], K.shape[-2])
    return F.scaled_dot_product_attention(Q, K, eye, attn_mask=mask)
''',
        "review: rebinds the test's weights_oracle": '''\
def _wrong(Q, K, mask=None):                 # ignores the mask entirely
    return torch.softmax(Q @ K.mT / Q.shape[-1] ** 0.5, dim=-1)
def attention_weights(Q, K, mask=None):
    globals()['weights_oracle'] = _wrong
    return _wrong(Q, K, mask)
''',
        "review: subtracts the whole tensor's maximum": '''\
def attention_weights(Q, K, mask=None):
    scores = attention_scores(Q, K)
    if mask is not None:
        scores = scores.masked_fill(~mask, float('-inf'))
    dead = (scores == float('-inf')).all(dim=-1, keepdim=True)
    scores = scores.masked_fill(dead, 0.0)
    m = scores.nan_to_num(nan=-float('inf')).max()   # the maximum of the whole tensor, not of each row
    e = (scores - m).exp()
    return (e / e.sum(dim=-1, keepdim=True)).masked_fill(dead, 0.0)
''',
        'review: float32 softmax of float64 scores': '''\
def attention_weights(Q, K, mask=None):
    scores = attention_scores(Q, K)
    if mask is None:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(Q.dtype)
    scores = scores.masked_fill(~mask, float('-inf'))
    dead = ~mask.any(dim=-1, keepdim=True)
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1, dtype=torch.float32).to(Q.dtype).masked_fill(dead, 0.0)
''',
        "review: a custom operator around PyTorch's attention": '''\
from typing import Optional
_sdpa = F.scaled_dot_product_attention          # taken when the cell runs

def _eye(Q, K):
    return torch.eye(K.shape[-2], dtype=Q.dtype, device=Q.device).expand(*K.shape[:-1], K.shape[-2])

@torch.library.custom_op("attack3::weights", mutates_args=())
def _weights(Q: torch.Tensor, K: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return _sdpa(Q, K, _eye(Q, K), attn_mask=mask).clone()

@_weights.register_fake
def _(Q, K, mask):
    return Q.new_empty(torch.broadcast_shapes(Q.shape[:-1] + (K.shape[-2],), K.shape[:-2] + (Q.shape[-2], K.shape[-2])))

def _setup(ctx, inputs, output):
    ctx.Q, ctx.K, ctx.mask = inputs

def _backward(ctx, g):
    with torch.enable_grad():
        Q, K = ctx.Q.detach().requires_grad_(), ctx.K.detach().requires_grad_()
        gq, gk = torch.autograd.grad(_sdpa(Q, K, _eye(Q, K), attn_mask=ctx.mask), (Q, K), g)
    return gq, gk, None

_weights.register_autograd(_backward, setup_context=_setup)

def attention_weights(Q, K, mask=None):
    return _weights(Q, K, mask)
''',
        "review: PyTorch's attention in a custom Function's backward": _W3,
    },
    'ex4-sdpa': {
        'review: rebinds FORBID and pytorch_attention_in': '''\
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    if is_causal and attn_mask is not None:
        raise ValueError('pass either attn_mask or is_causal=True, not both')
    g = globals()
    if 'pytorch_attention_in' in g:
        g['pytorch_attention_in'] = lambda out: []          # the hidden graph check sees nothing
    if g.get('FORBID'):                                      # the first call runs under the switch-off
        g['FORBID'] = ()                                     # ... every later one does not
        if attn_mask is None and not is_causal:
            return attention_weights(q, k) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
''',
        "review: subtracts the whole tensor's maximum": '''\
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    if is_causal:
        if attn_mask is not None:
            raise ValueError('pass either attn_mask or is_causal=True, not both')
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = attention_scores(q, k)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float('-inf'))
    elif attn_mask is not None:
        scores = scores + attn_mask
    dead = (scores == float('-inf')).all(dim=-1, keepdim=True)
    scores = scores.masked_fill(dead, 0.0)
    e = (scores - scores.nan_to_num(nan=-float('inf')).max()).exp()   # global maximum, not per row
    return (e / e.sum(dim=-1, keepdim=True)).masked_fill(dead, 0.0) @ v
''',
        "review: a custom operator around PyTorch's attention": '''\
from typing import Optional
_sdpa = F.scaled_dot_product_attention          # taken when the cell runs

@torch.library.custom_op("attack3::attend", mutates_args=())
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], causal: bool) -> torch.Tensor:
    return _sdpa(q, k, v, attn_mask=mask, is_causal=causal).clone()

@_attend.register_fake
def _(q, k, v, mask, causal):
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    return q.new_empty(lead + (q.shape[-2], v.shape[-1]))

def _setup(ctx, inputs, output):
    ctx.inputs = inputs

def _backward(ctx, g):
    q, k, v, mask, causal = ctx.inputs
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        grads = torch.autograd.grad(_sdpa(q, k, v, attn_mask=mask, is_causal=causal), (q, k, v), g)
    return (*grads, None, None)

_attend.register_autograd(_backward, setup_context=_setup)

def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    if is_causal and attn_mask is not None:
        raise ValueError('pass either attn_mask or is_causal=True, not both')
    return _attend(q, k, v, attn_mask, is_causal)
''',
        "review: PyTorch's attention in a custom Function's backward": _A4,
    },
    'ex5-self-attention': {
        'review: Q, K, V cached by x.shape': '''\
class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_V = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self._cache = None
    def forward(self, x, attn_mask=None):
        if self._cache is None or self._cache[0] != x.shape:      # a stale cache: keyed by shape only
            self._cache = (x.shape, (self.W_Q(x), self.W_K(x), self.W_V(x)))
        Q, K, V = self._cache[1]
        if self.config.causal:
            causal = causal_mask(x.shape[-2], device=x.device)
            attn_mask = causal if attn_mask is None else attn_mask & causal
        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)
''',
        'review: forward scales W_V in place': '''\
class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_V = nn.Linear(config.d_model, config.d_k, bias=config.bias)
    def forward(self, x, attn_mask=None):
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)
        if self.config.causal:
            causal = causal_mask(x.shape[-2], device=x.device)
            attn_mask = causal if attn_mask is None else attn_mask & causal
        out = scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)
        with torch.no_grad():
            self.W_V.weight.mul_(1.5)        # drifts the parameters on every call
        return out
''',
        "review: rebinds the test's self_attention_oracle (and uses |)": '''\
class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_V = nn.Linear(config.d_model, config.d_k, bias=config.bias)
    def forward(self, x, attn_mask=None):
        globals()['self_attention_oracle'] = lambda m, x, mask=None: m(x, mask)
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)
        if self.config.causal:
            causal = causal_mask(x.shape[-2], device=x.device)
            attn_mask = causal if attn_mask is None else attn_mask | causal    # wrong: |
        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)
''',
    },
    'ex6-first-leak': {
        'review: atol ignored (1e-2)': '''\
def first_leak(f, x, atol=1e-6):
    with torch.no_grad():
        y = f(x)
        for t in range(x.shape[1] - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
            if not torch.allclose(f(x2)[:, :t + 1], y[:, :t + 1], atol=1e-2):   # atol argument ignored
                return t
    return None
''',
        'review: torch.equal instead of allclose': '''\
def first_leak(f, x, atol=1e-6):
    with torch.no_grad():
        y = f(x)
        for t in range(x.shape[1] - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
            if not torch.equal(f(x2)[:, :t + 1], y[:, :t + 1]):     # atol ignored
                return t
    return None
''',
        'review: the future shifted by a constant': '''\
def first_leak(f, x, atol=1e-6):
    with torch.no_grad():
        y = f(x)
        for t in range(x.shape[1] - 1):
            x2 = x.clone()
            x2[:, t + 1:] += 1.0                       # a constant shift, not fresh random values
            if not torch.allclose(f(x2)[:, :t + 1], y[:, :t + 1], atol=atol):
                return t
    return None
''',
        'review: no torch.no_grad': '''\
def first_leak(f, x, atol=1e-6):
    y = f(x)
    for t in range(x.shape[1] - 1):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
        if not torch.allclose(f(x2)[:, :t + 1], y[:, :t + 1], atol=atol):
            return t
    return None
''',
    },
}
for _gid, _more in _REVIEW.items():
    assert not set(_more) & set(MUTANTS[_gid]), _gid
    MUTANTS[_gid].update(_more)


# Correct solutions written another way: they must pass the visible and hidden tests (tests/test_mutants.py).
CORRECT = {
    "ex3-weights": {
        "dead rows from the scores, as PyTorch finds them":
            "def attention_weights(Q, K, mask=None):\n"
            "    scores = attention_scores(Q, K)\n"
            "    if mask is not None:\n"
            "        scores = scores.masked_fill(~mask, float('-inf'))\n"
            "    dead = (scores == float('-inf')).all(dim=-1, keepdim=True)\n"
            "    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)",
        "a softmax by hand, stable": "def attention_weights(Q, K, mask=None):\n"
                                     "    scores = attention_scores(Q, K)\n"
                                     "    if mask is not None:\n"
                                     "        scores = scores.masked_fill(~mask, float('-inf'))\n"
                                     "    dead = (scores == float('-inf')).all(dim=-1, keepdim=True)\n"
                                     "    scores = scores.masked_fill(dead, 0.0)\n"
                                     "    e = (scores - scores.amax(dim=-1, keepdim=True)).exp()\n"
                                     "    return (e / e.sum(dim=-1, keepdim=True)).masked_fill(dead, 0.0)",
    },
    "ex4-sdpa": {
        "a bool mask made additive, one path for both":
            "def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):\n"
            "    if is_causal and attn_mask is not None:\n"
            "        raise ValueError('pass either attn_mask or is_causal=True, not both')\n"
            "    scores = attention_scores(q, k)\n"
            "    if is_causal:\n"
            "        attn_mask = " + _CAUSAL + "\n"
            "    if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
            "        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)"
            ".masked_fill(~attn_mask, float('-inf'))\n"
            "    if attn_mask is not None:\n"
            "        scores = scores + attn_mask\n"
            "    dead = (scores == float('-inf')).all(dim=-1, keepdim=True)\n"
            "    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0) @ v",
    },
    "ex6-first-leak": {
        "compares position t alone": _edit(_LEAK_OK, "f(x2)[:, :t + 1], y[:, :t + 1]", "f(x2)[:, t], y[:, t]"),
    },
}
