"""Wrong or forbidden solutions to chapter 4's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py)."""
from mutant_tools import edit as _edit


# Cheats that reassign a test helper in the notebook's namespace. The helpers the tests call
# indirectly (check_tensor -> check) live in solutions.testing and are not reached by a
# reassignment in the notebook, so switching off `check` alone leaves check_tensor working.
_NO_CHECK = "\ncheck = lambda *args, **kwargs: None\n"
_NO_CALL = "\ncall = lambda fn, *args, **kwargs: fn()\n"
# ... and both checks at once: the hidden tests import them again from solutions.testing
_NO_CHECKS = "\ncheck = check_tensor = lambda *args, **kwargs: None\n"
# ... and the switch-off emptied (the hidden tests import ATTENTION again)
_NO_FORBID = "\nATTENTION = ()\n"

# ---------------------------------------------------------------------------------------------
# ex1: mha_param_count

_COUNT_OK = (
    "def mha_param_count(d_model, n_head, bias=True):\n"
    "    if d_model % n_head != 0:\n"
    "        raise ValueError(f'd_model={d_model} is not divisible by n_head={n_head}')\n"
    "    return 4 * d_model * d_model + (4 * d_model if bias else 0)\n"
)
_COUNT = "4 * d_model * d_model + (4 * d_model if bias else 0)"
# family 4: the count read off PyTorch's module (correct, but the exercise asks for the formula)
def _COUNT_VIA(cls):
    return ("def mha_param_count(d_model, n_head, bias=True):\n"
            "    if d_model % n_head != 0:\n"
            "        raise ValueError(f'd_model={d_model} is not divisible by n_head={n_head}')\n"
            f"    return sum(p.numel() for p in {cls}(d_model, n_head, bias=bias).parameters())\n")

# ---------------------------------------------------------------------------------------------
# ex2: multi_head_attention_loop

_LOOP_OK = (
    "def multi_head_attention_loop(query, key, value, W_Q, W_K, W_V, W_O, n_head, attn_mask=None):\n"
    "    d_k = W_Q.shape[0] // n_head\n"
    "    heads = []\n"
    "    for i in range(n_head):\n"
    "        rows = slice(i * d_k, (i + 1) * d_k)\n"
    "        q, k, v = query @ W_Q[rows].T, key @ W_K[rows].T, value @ W_V[rows].T\n"
    "        heads.append(scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))\n"
    "    return torch.cat(heads, dim=-1) @ W_O.T\n"
)
_LOOP_HEAD = "def multi_head_attention_loop(query, key, value, W_Q, W_K, W_V, W_O, n_head, attn_mask=None):\n"
# PyTorch's bool masks say True = may NOT attend; ours say True = may attend
_TORCH_MASK = ("    if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
               "        attn_mask = ~attn_mask\n")
# the whole computation handed to nn.MultiheadAttention (correct, but forbidden)
_LOOP_VIA_MODULE = (
    "    d_model = W_Q.shape[0]\n"
    "    mha = {cls}(d_model, n_head, bias=False, batch_first=True, dtype=query.dtype)\n"
    "    with torch.no_grad():\n"
    "        mha.in_proj_weight.copy_(torch.cat([W_Q, W_K, W_V]))\n"
    "        mha.out_proj.weight.copy_(W_O)\n"
    + _TORCH_MASK +
    "    return mha(query, key, value, attn_mask=attn_mask, need_weights=False)[0].detach()\n"
)
_LOOP_VIA_FUNCTION = (
    _TORCH_MASK +
    "    q, k, v = (t.transpose(0, 1) for t in (query, key, value))\n"
    "    out, _ = F.multi_head_attention_forward(q, k, v, W_Q.shape[0], n_head, torch.cat([W_Q, W_K, W_V]), None,\n"
    "                                            None, None, False, 0.0, W_O, None, training=False,\n"
    "                                            need_weights=False, attn_mask=attn_mask)\n"
    "    return out.transpose(0, 1)\n"
)
_LOOP_VIA_NATIVE = (
    "    d_model = W_Q.shape[0]\n"
    "    if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
    "        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(~attn_mask, float('-inf'))\n"
    "    mask = None if attn_mask is None else attn_mask.expand(query.shape[0], n_head, *attn_mask.shape[-2:])\n"
    "    zeros = torch.zeros(3 * d_model, dtype=query.dtype)\n"
    "    return torch._native_multi_head_attention(query, key, value, d_model, n_head, torch.cat([W_Q, W_K, W_V]),\n"
    "                                              zeros, W_O, zeros[:d_model], mask, False)[0]\n"
)

# ---------------------------------------------------------------------------------------------
# ex3: MultiHeadAttention

_MHA_INIT = (
    "class MultiHeadAttention(nn.Module):\n"
    "    def __init__(self, config):\n"
    "        super().__init__()\n"
    "        self.config = config\n"
    "        self.W_Q = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
    "        self.W_K = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
    "        self.W_V = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
    "        self.W_O = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
    "    def forward(self, query, key, value, attn_mask=None, is_causal=False):\n"
)
_MHA_OK = _MHA_INIT + (
    "        h = self.config.n_head\n"
    "        q = split_heads(self.W_Q(query), h)\n"
    "        k = split_heads(self.W_K(key), h)\n"
    "        v = split_heads(self.W_V(value), h)\n"
    "        y = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)\n"
    "        return self.W_O(merge_heads(y))\n"
)
# forward bodies that hand the work to PyTorch's multi-head attention (correct, but forbidden)
_MHA_MASK = (
    "        h, (B, T_q, _), T_k = self.config.n_head, query.shape, key.shape[1]\n"
    "        if is_causal:\n"
    "            attn_mask = torch.ones(T_q, T_k, dtype=torch.bool).tril()\n"
    "        if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
    "            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(~attn_mask, float('-inf'))\n"
    "        if attn_mask is not None and attn_mask.dim() == 3:\n"
    "            attn_mask = attn_mask[:, None]\n"
    "        if attn_mask is not None and attn_mask.dim() == 4:\n"
    "            attn_mask = attn_mask.expand(B, h, T_q, T_k).reshape(B * h, T_q, T_k)\n"
)
_MHA_IN_BIAS = "(torch.cat([self.W_Q.bias, self.W_K.bias, self.W_V.bias]) if self.config.bias else None)"
_MHA_VIA_FUNCTION = _MHA_INIT + _MHA_MASK + (
    "        q, k, v = (t.transpose(0, 1) for t in (query, key, value))\n"
    "        out, _ = F.multi_head_attention_forward(\n"
    "            q, k, v, self.config.d_model, h, torch.cat([self.W_Q.weight, self.W_K.weight, self.W_V.weight]),\n"
    f"            {_MHA_IN_BIAS}, None, None, False, 0.0, self.W_O.weight, self.W_O.bias,\n"
    "            training=False, need_weights=False, attn_mask=attn_mask)\n"
    "        return out.transpose(0, 1)\n"
)
_MHA_VIA_MODULE = _MHA_INIT + _MHA_MASK + (
    "        mha = {cls}(self.config.d_model, h, bias=self.config.bias, batch_first=True)\n"
    "        with torch.no_grad():\n"
    "            mha.in_proj_weight.copy_(torch.cat([self.W_Q.weight, self.W_K.weight, self.W_V.weight]))\n"
    "            mha.out_proj.weight.copy_(self.W_O.weight)\n"
    "            if self.config.bias:\n"
    f"                mha.in_proj_bias.copy_({_MHA_IN_BIAS})\n"
    "                mha.out_proj.bias.copy_(self.W_O.bias)\n"
    "        return mha(query, key, value, attn_mask=attn_mask, need_weights=False)[0]\n"
)

# ---------------------------------------------------------------------------------------------
# ex4: from_torch

_FROM_OK = (
    "def from_torch(theirs):\n"
    "    if theirs.in_proj_weight is None:\n"
    "        raise ValueError('this nn.MultiheadAttention has separate key/value widths (kdim/vdim)')\n"
    "    if theirs.bias_k is not None or theirs.add_zero_attn:\n"
    "        raise ValueError('add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention')\n"
    "    bias = theirs.in_proj_bias is not None\n"
    "    ours = MultiHeadAttention(MultiHeadConfig(d_model=theirs.embed_dim, n_head=theirs.num_heads, bias=bias))\n"
    "    ours = ours.to(dtype=theirs.in_proj_weight.dtype, device=theirs.in_proj_weight.device)\n"
    "    with torch.no_grad():\n"
    "        for lin, w in zip((ours.W_Q, ours.W_K, ours.W_V), theirs.in_proj_weight.chunk(3)):\n"
    "            lin.weight.copy_(w)\n"
    "        ours.W_O.weight.copy_(theirs.out_proj.weight)\n"
    "        if bias:\n"
    "            for lin, b in zip((ours.W_Q, ours.W_K, ours.W_V), theirs.in_proj_bias.chunk(3)):\n"
    "                lin.bias.copy_(b)\n"
    "            ours.W_O.bias.copy_(theirs.out_proj.bias)\n"
    "    return ours\n"
)

# ---------------------------------------------------------------------------------------------
# ex5: head_weights

_HW_HEAD = "def head_weights(mha, query, key, attn_mask=None):\n"
_HW_OK = _HW_HEAD + (
    "    q = split_heads(mha.W_Q(query), mha.config.n_head)\n"
    "    k = split_heads(mha.W_K(key), mha.config.n_head)\n"
    "    return attention_weights(q, k, attn_mask)\n"
)

# ---------------------------------------------------------------------------------------------
# ex6: CausalSelfAttention

_CSA_INIT = (
    "class CausalSelfAttention(nn.Module):\n"
    "    def __init__(self, config):\n"
    "        super().__init__()\n"
    "        self.config = config\n"
    "        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)\n"
    "        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
    "        self.resid_dropout = nn.Dropout(config.dropout)\n"
    "    def forward(self, x):\n"
)
_CSA_OK = _CSA_INIT + (
    "        q, k, v = self.c_attn(x).split(self.config.d_model, dim=-1)\n"
    "        q, k, v = (split_heads(t, self.config.n_head) for t in (q, k, v))\n"
    "        dropout_p = self.config.dropout if self.training else 0.0\n"
    "        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)\n"
    "        return self.resid_dropout(self.c_proj(merge_heads(y)))\n"
)
_CSA_FUSED = (  # the nanoGPT way of splitting the fused projection: one view, one permute
    "        B, T, C = x.shape\n"
    "        h = self.config.n_head\n"
    "        q, k, v = self.c_attn(x).view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)\n"
    "        dropout_p = self.config.dropout if self.training else 0.0\n"
    "        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)\n"
    "        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))\n"
)

MUTANTS = {
    "ex1-param-count": {
        "three matrices": _edit(_COUNT_OK, _COUNT, "3 * d_model * d_model + (3 * d_model if bias else 0)"),
        "no biases": _edit(_COUNT_OK, _COUNT, "4 * d_model * d_model"),
        "bias flag ignored": _edit(_COUNT_OK, _COUNT, "4 * d_model * d_model + 4 * d_model"),
        "W_O without bias": _edit(_COUNT_OK, _COUNT, "4 * d_model * d_model + (3 * d_model if bias else 0)"),
        "one bias per head": _edit(_COUNT_OK, _COUNT, "4 * d_model * d_model + (4 * n_head if bias else 0)"),
        "full-width matrices per head": _edit(_COUNT_OK, _COUNT,
                                              "3 * n_head * d_model * d_model + d_model * d_model"
                                              " + (4 * d_model if bias else 0)"),
        "per-head matrices d_k x d_k": _edit(_COUNT_OK, _COUNT,
                                             "3 * n_head * (d_model // n_head) ** 2 + d_model * d_model"
                                             " + (4 * d_model if bias else 0)"),
        "no ValueError": _edit(_COUNT_OK, "    if d_model % n_head != 0:\n"
                                          "        raise ValueError(f'd_model={d_model} is not divisible by n_head={n_head}')\n",
                               ""),
        "assert instead of ValueError": _edit(_COUNT_OK, "    if d_model % n_head != 0:\n"
                                                         "        raise ValueError(f'd_model={d_model} is not divisible "
                                                         "by n_head={n_head}')\n",
                                              "    assert d_model % n_head == 0, f'{d_model} % {n_head} != 0'\n"),
        "ValueError without the numbers": _edit(_COUNT_OK, "f'd_model={d_model} is not divisible by n_head={n_head}'",
                                                "'d_model is not divisible by n_head'"),
        "ValueError only when n_head > d_model": _edit(_COUNT_OK, "d_model % n_head != 0", "n_head > d_model"),
        "memorised answers": "def mha_param_count(d_model, n_head, bias=True):\n"
                             "    if d_model % n_head:\n"
                             "        raise ValueError(f'd_model={d_model} is not divisible by n_head={n_head}')\n"
                             "    return {(512, 8): 1_050_624, (768, 12): 2_359_296}.get((d_model, n_head), 0)",
        "ignores bias=False, check switched off": _edit(_COUNT_OK, _COUNT, "4 * d_model * d_model + 4 * d_model")
                                                  + _NO_CHECK,
        "family 4: counts nn.MultiheadAttention's parameters": _COUNT_VIA("nn.MultiheadAttention"),
        "family 4: counts ORACLE.MultiheadAttention's parameters": _COUNT_VIA("ORACLE.MultiheadAttention"),
        "family 4: counts an alias taken before the test": "_MHA = nn.MultiheadAttention\n"
                                                            + _COUNT_VIA("_MHA"),
        "family 4: counts a subclass": "class _M(nn.MultiheadAttention):\n    pass\n" + _COUNT_VIA("_M"),
        "family 4: counts nn.MultiheadAttention, ATTENTION emptied": _COUNT_VIA("nn.MultiheadAttention")
                                                                     + _NO_FORBID,
        "ignores bias=False, check and check_tensor switched off": _edit(_COUNT_OK, _COUNT,
                                                                         "4 * d_model * d_model + 4 * d_model")
                                                                   + _NO_CHECKS,
        "review: ValueError also when d_k is not a power of two": _edit(
            _COUNT_OK, "    if d_model % n_head != 0:\n",
            "    if d_model % n_head != 0 or (d_model // n_head) & (d_model // n_head - 1):\n"),
    },
    "ex2-loop": {
        "columns instead of rows": _edit(_LOOP_OK, "query @ W_Q[rows].T, key @ W_K[rows].T, value @ W_V[rows].T",
                                         "query @ W_Q[:, rows], key @ W_K[:, rows], value @ W_V[:, rows]"),
        "x @ W instead of x @ W.T": _edit(_LOOP_OK, "query @ W_Q[rows].T, key @ W_K[rows].T, value @ W_V[rows].T",
                                          "(query @ W_Q)[..., rows], (key @ W_K)[..., rows], (value @ W_V)[..., rows]"),
        "W_O not transposed": _edit(_LOOP_OK, "@ W_O.T", "@ W_O"),
        "no W_O": _edit(_LOOP_OK, " @ W_O.T", ""),
        "heads in reverse order": _edit(_LOOP_OK, "torch.cat(heads, dim=-1)", "torch.cat(heads[::-1], dim=-1)"),
        "heads concatenated along the time axis": _edit(_LOOP_OK, "torch.cat(heads, dim=-1)", "torch.cat(heads, dim=1)"),
        "heads interleaved": _edit(_LOOP_OK, "torch.cat(heads, dim=-1)",
                                   "torch.stack(heads, dim=-1).flatten(-2)"),
        "heads summed": _edit(_LOOP_OK, "torch.cat(heads, dim=-1) @ W_O.T",
                              "sum(heads).repeat(1, 1, n_head) @ W_O.T"),
        "mask not passed on": _edit(_LOOP_OK, "scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)",
                                    "scaled_dot_product_attention(q, k, v)"),
        "causal mask always": _edit(_LOOP_OK, "scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)",
                                    "scaled_dot_product_attention(q, k, v, is_causal=True)"),
        "keys and values both from key": _edit(_LOOP_OK, "value @ W_V[rows].T", "key @ W_V[rows].T"),
        "keys from the query": _edit(_LOOP_OK, "key @ W_K[rows].T", "query @ W_K[rows].T"),
        "one head's rows for every head": _edit(_LOOP_OK, "rows = slice(i * d_k, (i + 1) * d_k)", "rows = slice(0, d_k)"),
        "d_k rows off by one head": _edit(_LOOP_OK, "rows = slice(i * d_k, (i + 1) * d_k)",
                                          "rows = slice((i + 1) % n_head * d_k, ((i + 1) % n_head + 1) * d_k)"),
        "scaled by sqrt(d_model)": _edit(_LOOP_OK, "heads.append(scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))",
                                         "heads.append(scaled_dot_product_attention(q * math.sqrt(d_k / W_Q.shape[0]), "
                                         "k, v, attn_mask=attn_mask))"),
        "transposes W_O in place": _edit(_LOOP_OK, "@ W_O.T", "@ W_O.t_()"),
        "calls nn.MultiheadAttention": _LOOP_HEAD + _LOOP_VIA_MODULE.format(cls="nn.MultiheadAttention"),
        "calls ORACLE.MultiheadAttention": _LOOP_HEAD + _LOOP_VIA_MODULE.format(cls="ORACLE.MultiheadAttention"),
        "family 4: F.scaled_dot_product_attention per head": _edit(_LOOP_OK, "heads.append(scaled_dot_product_attention(",
                                                                   "heads.append(F.scaled_dot_product_attention("),
        "calls F.multi_head_attention_forward": _LOOP_HEAD + _LOOP_VIA_FUNCTION,
        "aliases F.multi_head_attention_forward": "_mhaf = F.multi_head_attention_forward\n" + _LOOP_HEAD +
                                                  _LOOP_VIA_FUNCTION.replace("F.multi_head_attention_forward", "_mhaf"),
        "calls torch._native_multi_head_attention": _LOOP_HEAD + _LOOP_VIA_NATIVE,
        "calls aten": _LOOP_HEAD + _LOOP_VIA_NATIVE.replace("torch._native_multi_head_attention",
                                                             "torch.ops.aten._native_multi_head_attention"),
        "no W_O, check switched off": _edit(_LOOP_OK, " @ W_O.T", "") + _NO_CHECK,
        "no W_O, call and check switched off": _edit(_LOOP_OK, " @ W_O.T", "") + _NO_CHECK + _NO_CALL,
        "no W_O, check and check_tensor switched off": _edit(_LOOP_OK, " @ W_O.T", "") + _NO_CHECKS,
        "empties ATTENTION": _NO_FORBID + _LOOP_HEAD + _LOOP_VIA_MODULE.format(cls="ORACLE.MultiheadAttention"),
        "replaces check_tensor with one that skips the switch-off": (
            "_check_tensor = check_tensor\n"
            "check_tensor = lambda got, *args, forbid=(), **kwargs: _check_tensor(got, *args, **kwargs)\n"
            + _LOOP_HEAD + _LOOP_VIA_MODULE.format(cls="ORACLE.MultiheadAttention")),
        "escapes the switch": "from torch.utils._python_dispatch import _disable_current_modes\n" + _LOOP_HEAD +
                              "    with torch._C.DisableTorchFunction(), _disable_current_modes():\n"
                              "        return _loop(query, key, value, W_Q, W_K, W_V, W_O, n_head, attn_mask)\n" +
                              _LOOP_HEAD.replace("multi_head_attention_loop", "_loop") +
                              _LOOP_VIA_MODULE.format(cls="ORACLE.MultiheadAttention"),
    },
    "ex3-mha": {
        "split without transpose": _edit(_MHA_OK, "        h = self.config.n_head\n"
                                                   "        q = split_heads(self.W_Q(query), h)\n"
                                                   "        k = split_heads(self.W_K(key), h)\n"
                                                   "        v = split_heads(self.W_V(value), h)\n",
                                         "        h = self.config.n_head\n"
                                         "        B, T_q, C = query.shape\n"
                                         "        T_k = key.shape[1]\n"
                                         "        q = self.W_Q(query).reshape(B, h, T_q, C // h)\n"
                                         "        k = self.W_K(key).reshape(B, h, T_k, C // h)\n"
                                         "        v = self.W_V(value).reshape(B, h, T_k, C // h)\n"),
        "merge without transpose": _edit(_MHA_OK, "self.W_O(merge_heads(y))",
                                         "self.W_O(y.reshape(query.shape[0], query.shape[1], -1))"),
        "heads never merged": _edit(_MHA_OK, "self.W_O(merge_heads(y))", "self.W_O(y.sum(1).repeat(1, 1, h))"),
        "no W_O": _edit(_MHA_OK, "self.W_O(merge_heads(y))", "merge_heads(y)"),
        "mask ignored": _edit(_MHA_OK, "attn_mask=attn_mask, is_causal=is_causal", "is_causal=is_causal"),
        "is_causal ignored": _edit(_MHA_OK, "attn_mask=attn_mask, is_causal=is_causal", "attn_mask=attn_mask"),
        "keys from the query (self-attention only)": _edit(_MHA_OK, "self.W_K(key)", "self.W_K(query)"),
        "values from the key": _edit(_MHA_OK, "self.W_V(value)", "self.W_V(key)"),
        "K and V projections swapped": _edit(_edit(_MHA_OK, "self.W_K(key)", "self.W_V(key)"),
                                             "self.W_V(value)", "self.W_K(value)"),
        "n_head and d_k swapped": _edit(_MHA_OK, "h = self.config.n_head", "h = self.config.d_model // self.config.n_head"),
        "biases always": _edit(_MHA_OK, ", bias=config.bias)", ")"),
        "W_Q with a bias always": _edit(_MHA_OK, "self.W_Q = nn.Linear(config.d_model, config.d_model, bias=config.bias)",
                                        "self.W_Q = nn.Linear(config.d_model, config.d_model)"),
        "W_O first": _edit(_MHA_OK, "        self.W_O = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n", "")
                     .replace("        self.W_Q = nn.Linear", "        self.W_O = nn.Linear(config.d_model, config.d_model, "
                                                             "bias=config.bias)\n        self.W_Q = nn.Linear"),
        "one fused QKV layer": _MHA_INIT.replace(
            "        self.W_Q = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
            "        self.W_K = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n"
            "        self.W_V = nn.Linear(config.d_model, config.d_model, bias=config.bias)\n",
            "        self.W_QKV = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)\n") + (
            "        h = self.config.n_head\n"
            "        W_Q, W_K, W_V = self.W_QKV.weight.chunk(3)\n"
            "        b_Q, b_K, b_V = self.W_QKV.bias.chunk(3) if self.config.bias else (None, None, None)\n"
            "        q, k, v = (split_heads(F.linear(t, W, b), h) for t, W, b in ((query, W_Q, b_Q), (key, W_K, b_K),\n"
            "                                                                    (value, W_V, b_V)))\n"
            "        y = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)\n"
            "        return self.W_O(merge_heads(y))\n"),
        "scaled by sqrt(d_model)": _edit(_MHA_OK, "y = scaled_dot_product_attention(q, k, v,",
                                         "y = scaled_dot_product_attention(q * math.sqrt(q.shape[-1] / query.shape[-1]), "
                                         "k, v,"),
        "causal mask of T_q x T_q": _edit(_MHA_OK, "attn_mask=attn_mask, is_causal=is_causal",
                                          "attn_mask=causal_mask(query.shape[1]) if is_causal else attn_mask"),
        "calls F.multi_head_attention_forward": _MHA_VIA_FUNCTION,
        "wraps nn.MultiheadAttention": _MHA_VIA_MODULE.format(cls="nn.MultiheadAttention"),
        "wraps ORACLE.MultiheadAttention": _MHA_VIA_MODULE.format(cls="ORACLE.MultiheadAttention"),
        "family 4: F.scaled_dot_product_attention": _edit(_MHA_OK, "y = scaled_dot_product_attention(",
                                                          "y = F.scaled_dot_product_attention("),
        "mask ignored, check switched off": _edit(_MHA_OK, "attn_mask=attn_mask, is_causal=is_causal",
                                                  "is_causal=is_causal") + _NO_CHECK,
        "mask ignored, check and check_tensor switched off": _edit(_MHA_OK, "attn_mask=attn_mask, is_causal=is_causal",
                                                                   "is_causal=is_causal") + _NO_CHECKS,
        "empties ATTENTION": _NO_FORBID + _MHA_VIA_MODULE.format(cls="ORACLE.MultiheadAttention"),
        "review: is_causal made into a mask without device=": _edit(
            _MHA_OK, "        y = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)\n",
            "        if is_causal:\n"
            "            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()\n"
            "        y = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)\n"),
    },
    "ex4-from-torch": {
        "Q and K swapped": _edit(_FROM_OK, "for lin, w in zip((ours.W_Q, ours.W_K, ours.W_V)",
                                 "for lin, w in zip((ours.W_K, ours.W_Q, ours.W_V)"),
        "Q and K biases swapped": _edit(_FROM_OK, "for lin, b in zip((ours.W_Q, ours.W_K, ours.W_V)",
                                        "for lin, b in zip((ours.W_K, ours.W_Q, ours.W_V)"),
        "biases not copied": _edit(_FROM_OK, "        if bias:\n"
                                             "            for lin, b in zip((ours.W_Q, ours.W_K, ours.W_V), "
                                             "theirs.in_proj_bias.chunk(3)):\n"
                                             "                lin.bias.copy_(b)\n"
                                             "            ours.W_O.bias.copy_(theirs.out_proj.bias)\n", ""),
        "output bias not copied": _edit(_FROM_OK, "            ours.W_O.bias.copy_(theirs.out_proj.bias)\n", ""),
        "bias always": _edit(_edit(_FROM_OK, "bias = theirs.in_proj_bias is not None", "bias = True"),
                             "        if bias:\n", "        if theirs.in_proj_bias is not None:\n"),
        "out_proj not copied": _edit(_FROM_OK, "        ours.W_O.weight.copy_(theirs.out_proj.weight)\n", ""),
        "weights transposed": _edit(_FROM_OK, "lin.weight.copy_(w)", "lin.weight.copy_(w.T)"),
        "chunks along the columns": _edit(_FROM_OK, "theirs.in_proj_weight.chunk(3)", "theirs.in_proj_weight.chunk(3, dim=1)"),
        "n_head is the head width": _edit(_FROM_OK, "n_head=theirs.num_heads", "n_head=theirs.head_dim"),
        "shares the tensors (nn.Parameter)": _edit(_edit(_FROM_OK, "lin.weight.copy_(w)", "lin.weight = nn.Parameter(w)"),
                                                   "lin.bias.copy_(b)", "lin.bias = nn.Parameter(b)"),
        "shares the tensors (.data)": _edit(_edit(_edit(_FROM_OK, "lin.weight.copy_(w)", "lin.weight.data = w"),
                                                  "lin.bias.copy_(b)", "lin.bias.data = b"),
                                            "ours.W_O.weight.copy_(theirs.out_proj.weight)",
                                            "ours.W_O.weight = theirs.out_proj.weight"),
        "shares out_proj only": _edit(_FROM_OK, "ours.W_O.weight.copy_(theirs.out_proj.weight)",
                                      "ours.W_O = theirs.out_proj"),
        "family 6: ignores the dtype": _edit(_FROM_OK, "dtype=theirs.in_proj_weight.dtype, ", ""),
        "family 6: ignores the device": _edit(_FROM_OK, ", device=theirs.in_proj_weight.device", ""),
        "family 6: skips the key bias (it cancels in the softmax)": _edit(
            _FROM_OK, "            for lin, b in zip((ours.W_Q, ours.W_K, ours.W_V), theirs.in_proj_bias.chunk(3)):\n"
                      "                lin.bias.copy_(b)\n",
            "            b_Q, _, b_V = theirs.in_proj_bias.chunk(3)\n"
            "            ours.W_Q.bias.copy_(b_Q)\n"
            "            ours.W_V.bias.copy_(b_V)\n"),
        "family 6: zeroes the key bias": _edit(
            _FROM_OK, "                lin.bias.copy_(b)\n",
            "                lin.bias.copy_(b if lin is not ours.W_K else torch.zeros_like(b))\n"),
        "family 6: device from the output projection's bias": _edit(
            _FROM_OK, "device=theirs.in_proj_weight.device", "device='cpu' if theirs.out_proj.bias is None "
            "else theirs.out_proj.bias.device"),
        "no ValueError for kdim/vdim": _edit(_FROM_OK, "    if theirs.in_proj_weight is None:\n"
                                                       "        raise ValueError('this nn.MultiheadAttention has separate "
                                                       "key/value widths (kdim/vdim)')\n", ""),
        "kdim/vdim: q_proj_weight taken as the packed weight": _edit(
            _FROM_OK, "    if theirs.in_proj_weight is None:\n"
                      "        raise ValueError('this nn.MultiheadAttention has separate key/value widths (kdim/vdim)')\n",
            "    if theirs.in_proj_weight is None:\n"
            "        theirs.in_proj_weight = theirs.q_proj_weight\n"),
        "no ValueError for add_bias_kv or add_zero_attn": _edit(
            _FROM_OK, "    if theirs.bias_k is not None or theirs.add_zero_attn:\n"
                      "        raise ValueError('add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention')\n", ""),
        "no ValueError for add_zero_attn": _edit(_FROM_OK, "theirs.bias_k is not None or theirs.add_zero_attn",
                                                 "theirs.bias_k is not None"),
        "returns the nn.MultiheadAttention": "def from_torch(theirs):\n    return theirs",
        "Q and K swapped, check switched off": _edit(_FROM_OK, "for lin, w in zip((ours.W_Q, ours.W_K, ours.W_V)",
                                                     "for lin, w in zip((ours.W_K, ours.W_Q, ours.W_V)") + _NO_CHECK,
        "Q and K swapped, check and check_tensor switched off": _edit(_FROM_OK,
                                                                      "for lin, w in zip((ours.W_Q, ours.W_K, ours.W_V)",
                                                                      "for lin, w in zip((ours.W_K, ours.W_Q, ours.W_V)")
                                                                + _NO_CHECKS,
        "review: parameters frozen (requires_grad_(False))": _edit(_FROM_OK, "    return ours\n",
                                                                     "    return ours.requires_grad_(False)\n"),
        "review: weights moved to buffers": _edit(
            _FROM_OK, "    return ours\n",
            "    for lin in (ours.W_Q, ours.W_K, ours.W_V, ours.W_O):\n"
            "        for name in ('weight', 'bias'):\n"
            "            p = getattr(lin, name)\n"
            "            if p is not None:\n"
            "                delattr(lin, name)\n"
            "                lin.register_buffer(name, p.detach().clone())\n"
            "    return ours\n"),
        "review: forward replaced by theirs": _edit(
            _FROM_OK, "    return ours\n",
            "    def forward(query, key, value, attn_mask=None, is_causal=False):\n"
            "        if attn_mask is not None and attn_mask.dtype == torch.bool:\n"
            "            attn_mask = ~attn_mask\n"
            "        return theirs(query, key, value, attn_mask=attn_mask, need_weights=False)[0]\n"
            "    ours.forward = forward\n"
            "    return ours\n"),
    },
    "ex5-head-weights": {
        "averages the heads": _edit(_HW_OK, "attention_weights(q, k, attn_mask)", "attention_weights(q, k, attn_mask).mean(1)"),
        "no scale": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                          "    scores = q @ k.transpose(-2, -1)\n"
                          "    if attn_mask is not None:\n"
                          "        scores = scores.masked_fill(~attn_mask, float('-inf'))\n"
                          "    return torch.softmax(scores, dim=-1)\n"),
        "scaled by sqrt(d_model)": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                         "    scores = q @ k.transpose(-2, -1) / math.sqrt(query.shape[-1])\n"
                                         "    if attn_mask is not None:\n"
                                         "        scores = scores.masked_fill(~attn_mask, float('-inf'))\n"
                                         "    return torch.softmax(scores, dim=-1)\n"),
        "keys from the value projection": _edit(_HW_OK, "mha.W_K(key)", "mha.W_V(key)"),
        "keys from the query": _edit(_HW_OK, "mha.W_K(key)", "mha.W_K(query)"),
        "mask ignored": _edit(_HW_OK, "attention_weights(q, k, attn_mask)", "attention_weights(q, k)"),
        "mask inverted": _edit(_HW_OK, "attention_weights(q, k, attn_mask)",
                               "attention_weights(q, k, None if attn_mask is None else ~attn_mask)"),
        "one head": _edit(_HW_OK, "    q = split_heads(mha.W_Q(query), mha.config.n_head)\n"
                                  "    k = split_heads(mha.W_K(key), mha.config.n_head)\n",
                          "    q, k = mha.W_Q(query), mha.W_K(key)\n"),
        "split without transpose": _edit(_HW_OK, "    q = split_heads(mha.W_Q(query), mha.config.n_head)\n"
                                                 "    k = split_heads(mha.W_K(key), mha.config.n_head)\n",
                                         "    h, B = mha.config.n_head, query.shape[0]\n"
                                         "    q = mha.W_Q(query).reshape(B, h, query.shape[1], -1)\n"
                                         "    k = mha.W_K(key).reshape(B, h, key.shape[1], -1)\n"),
        "biases dropped": _edit(_edit(_HW_OK, "mha.W_Q(query)", "query @ mha.W_Q.weight.T"),
                                "mha.W_K(key)", "key @ mha.W_K.weight.T"),
        "softmax over the queries": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                          "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
                                          "    if attn_mask is not None:\n"
                                          "        scores = scores.masked_fill(~attn_mask, float('-inf'))\n"
                                          "    return torch.nan_to_num(torch.softmax(scores, dim=-2))\n"),
        "family 4: F.scaled_dot_product_attention with the identity as values": _edit(
            _HW_OK, "    return attention_weights(q, k, attn_mask)\n",
            "    eye = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])\n"
            "    return F.scaled_dot_product_attention(q, k, eye, attn_mask=attn_mask)\n"),
        "family 4: ORACLE.scaled_dot_product_attention with the identity as values": _edit(
            _HW_OK, "    return attention_weights(q, k, attn_mask)\n",
            "    eye = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])\n"
            "    return ORACLE.scaled_dot_product_attention(q, k, eye, attn_mask=attn_mask)\n"),
        "family 4: nn.MultiheadAttention's per-head weights": _HW_HEAD + (
            "    c = mha.config\n"
            "    m = ORACLE.MultiheadAttention(c.d_model, c.n_head, bias=c.bias, batch_first=True)\n"
            "    with torch.no_grad():\n"
            "        m.in_proj_weight.copy_(torch.cat([mha.W_Q.weight, mha.W_K.weight, mha.W_V.weight]))\n"
            "        if c.bias:\n"
            "            m.in_proj_bias.copy_(torch.cat([mha.W_Q.bias, mha.W_K.bias, mha.W_V.bias]))\n"
            "    mask = None if attn_mask is None else ~attn_mask\n"
            "    return m(query, key, key, attn_mask=mask, average_attn_weights=False)[1]\n"),
        "family 4: identity values, ATTENTION emptied": _edit(
            _HW_OK, "    return attention_weights(q, k, attn_mask)\n",
            "    eye = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])\n"
            "    return F.scaled_dot_product_attention(q, k, eye, attn_mask=attn_mask)\n") + _NO_FORBID,
        "weights times values": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                      "    v = split_heads(mha.W_V(key), mha.config.n_head)\n"
                                      "    return attention_weights(q, k, attn_mask) @ v\n"),
        "no scale, check switched off": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                              "    return torch.softmax(q @ k.transpose(-2, -1), dim=-1)\n") + _NO_CHECK,
        "no scale, check and check_tensor switched off": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                                               "    return torch.softmax(q @ k.transpose(-2, -1), dim=-1)\n")
                                                         + _NO_CHECKS,
    },
    "ex6-causal": {
        "split in the order k, q, v": _edit(_CSA_OK, "q, k, v = self.c_attn(x).split", "k, q, v = self.c_attn(x).split"),
        "split in the order v, k, q": _edit(_CSA_OK, "q, k, v = self.c_attn(x).split", "v, k, q = self.c_attn(x).split"),
        "split along the time axis": _edit(_CSA_OK, "self.c_attn(x).split(self.config.d_model, dim=-1)",
                                           "self.c_attn(x).chunk(3, dim=1)"),
        "view(B, T, h, 3, d)": _CSA_INIT + _edit(_CSA_FUSED, "view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)",
                                                 "view(B, T, h, 3, C // h).permute(3, 0, 2, 1, 4)"),
        "view(B, T, 3, h, d) without the head transpose": _CSA_INIT + _edit(_CSA_FUSED, "permute(2, 0, 3, 1, 4)",
                                                                            "permute(2, 0, 1, 3, 4)"
                                                                            ".reshape(3, B, h, T, C // h)"),
        "view(3, B, T, h, d)": _CSA_INIT + _edit(_CSA_FUSED, "view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)",
                                                 "reshape(3, B, T, h, C // h).transpose(2, 3)"),
        "merge without transpose": _CSA_INIT + _edit(_CSA_FUSED, "y.transpose(1, 2).reshape(B, T, C)", "y.reshape(B, T, C)"),
        "not causal": _edit(_CSA_OK, "is_causal=True", "is_causal=False"),
        "upper-triangular mask": _edit(_CSA_OK, "is_causal=True",
                                       "attn_mask=torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu()"),
        "causal mask sized by the batch": _edit(_CSA_OK, "is_causal=True",
                                                "attn_mask=causal_mask(x.shape[0]) if x.shape[0] > 1 else None"),
        "no c_proj": _edit(_CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))", "self.resid_dropout(merge_heads(y))"),
        "biases always": _edit(_CSA_OK, "nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)",
                               "nn.Linear(config.d_model, 3 * config.d_model)"),
        "c_proj without bias": _edit(_CSA_OK, "nn.Linear(config.d_model, config.d_model, bias=config.bias)",
                                     "nn.Linear(config.d_model, config.d_model, bias=False)"),
        "separate W_Q, W_K, W_V": _edit(_CSA_OK, "        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, "
                                                 "bias=config.bias)\n",
                                        "        self.c_attn = nn.ModuleList(nn.Linear(config.d_model, config.d_model, "
                                        "bias=config.bias) for _ in range(3))\n")
                                  .replace("self.c_attn(x).split(self.config.d_model, dim=-1)",
                                           "(lin(x) for lin in self.c_attn)"),
        "no dropout in training mode": _edit(_edit(_CSA_OK, "dropout_p = self.config.dropout if self.training else 0.0",
                                                   "dropout_p = 0.0"),
                                             "self.resid_dropout(self.c_proj(merge_heads(y)))", "self.c_proj(merge_heads(y))"),
        "dropout in eval mode": _edit(_edit(_CSA_OK, "dropout_p = self.config.dropout if self.training else 0.0",
                                            "dropout_p = self.config.dropout"),
                                      "self.resid_dropout(self.c_proj(merge_heads(y)))",
                                      "F.dropout(self.c_proj(merge_heads(y)), self.config.dropout, training=True)"),
        "attention dropout in eval mode": _edit(_CSA_OK, "dropout_p = self.config.dropout if self.training else 0.0",
                                                "dropout_p = self.config.dropout"),
        "dropout even with p = 0": _edit(_CSA_OK, "self.resid_dropout = nn.Dropout(config.dropout)",
                                         "self.resid_dropout = nn.Dropout(max(config.dropout, 0.1))"),
        "scaled by sqrt(d_model)": _edit(_CSA_OK, "dropout_p=dropout_p, is_causal=True",
                                         "dropout_p=dropout_p, is_causal=True, scale=1 / math.sqrt(x.shape[-1])"),
        "no residual dropout": _edit(_CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))",
                                     "self.c_proj(merge_heads(y))"),
        "no attention dropout": _edit(_CSA_OK, "dropout_p = self.config.dropout if self.training else 0.0",
                                      "dropout_p = 0.0"),
        "hard-coded p = 0.1": _edit(_edit(_CSA_OK, "nn.Dropout(config.dropout)", "nn.Dropout(0.1 if config.dropout else 0.0)"),
                                    "dropout_p = self.config.dropout if self.training else 0.0",
                                    "dropout_p = 0.1 if self.training and self.config.dropout else 0.0"),
        "hand-made dropout without the 1 / (1 - p)": _edit(
            _CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))",
            "self.c_proj(merge_heads(y)) * ((torch.rand(x.shape) >= self.config.dropout) if self.training else 1.0)"),
        "family 6: residual dropout before c_proj": _edit(_CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))",
                                                           "self.c_proj(self.resid_dropout(merge_heads(y)))"),
        "family 6: dropout on the input": _edit(_edit(_CSA_OK, "self.c_attn(x).split", "self.c_attn(self.resid_dropout(x)).split"),
                                                "self.resid_dropout(self.c_proj(merge_heads(y)))",
                                                "self.c_proj(merge_heads(y))"),
        "family 6: view head merge": _CSA_INIT + _edit(_CSA_FUSED, "y.transpose(1, 2).reshape(B, T, C)",
                                                      "y.transpose(1, 2).view(B, T, C)"),
        "family 6: residual dropout on the attention's output": _edit(
            _CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))",
            "self.c_proj(merge_heads(self.resid_dropout(y)))"),
        "family 6: dropout_p from resid_dropout in eval mode too": _edit(
            _CSA_OK, "dropout_p = self.config.dropout if self.training else 0.0",
            "dropout_p = self.resid_dropout.p"),
        "not causal, check switched off": _edit(_CSA_OK, "is_causal=True", "is_causal=False") + _NO_CHECK,
        "not causal, check and check_tensor switched off": _edit(_CSA_OK, "is_causal=True", "is_causal=False") + _NO_CHECKS,
        "review: the generator restored after every call (fork_rng)": _edit(
            _CSA_OK, "    def forward(self, x):\n",
            "    def forward(self, x):\n"
            "        with torch.random.fork_rng():\n"
            "            return self._forward(x)\n"
            "    def _forward(self, x):\n"),
        "review: reseeded with torch.initial_seed() in every call": _edit(
            _CSA_OK, "    def forward(self, x):\n",
            "    def forward(self, x):\n"
            "        torch.manual_seed(torch.initial_seed())\n"),
    },
}

# Correct solutions written another way: each must pass the visible and hidden tests
# (tests/test_mutants.py::test_correct_variants_pass).
CORRECT = {
    "ex1-param-count": {
        "bias as a number": _edit(_COUNT_OK, _COUNT, "4 * d_model * (d_model + bool(bias))"),
    },
    "ex2-loop": {
        "project once, slice the columns": _edit(
            _LOOP_OK, "q, k, v = query @ W_Q[rows].T, key @ W_K[rows].T, value @ W_V[rows].T",
            "q, k, v = (query @ W_Q.T)[..., rows], (key @ W_K.T)[..., rows], (value @ W_V.T)[..., rows]"),
    },
    "ex4-from-torch": {
        "load_state_dict, .to(tensor)": (
            "def from_torch(theirs):\n"
            "    if theirs.in_proj_weight is None:\n"
            "        raise ValueError('separate key/value widths (kdim/vdim)')\n"
            "    if theirs.bias_k is not None or theirs.add_zero_attn:\n"
            "        raise ValueError('add_bias_kv and add_zero_attn are not supported')\n"
            "    bias = theirs.in_proj_bias is not None\n"
            "    config = MultiHeadConfig(d_model=theirs.embed_dim, n_head=theirs.num_heads, bias=bias)\n"
            "    ours = MultiHeadAttention(config).to(theirs.in_proj_weight)\n"
            "    state = {}\n"
            "    for i, name in enumerate('QKV'):\n"
            "        state[f'W_{name}.weight'] = theirs.in_proj_weight.chunk(3)[i]\n"
            "        if bias:\n"
            "            state[f'W_{name}.bias'] = theirs.in_proj_bias.chunk(3)[i]\n"
            "    state.update({f'W_O.{k}': v for k, v in theirs.out_proj.state_dict().items()})\n"
            "    ours.load_state_dict(state)\n"
            "    return ours\n"),
    },
    "ex5-head-weights": {
        "scores by hand": _edit(_HW_OK, "    return attention_weights(q, k, attn_mask)\n",
                                "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
                                "    if attn_mask is not None:\n"
                                "        scores = scores.masked_fill(~attn_mask, float('-inf'))\n"
                                "    return torch.softmax(scores, dim=-1)\n"),
    },
    "ex6-causal": {
        "nanoGPT's view and permute": _CSA_INIT + _CSA_FUSED,
        "contiguous before view": _CSA_INIT + _edit(_CSA_FUSED, "y.transpose(1, 2).reshape(B, T, C)",
                                                    "y.transpose(1, 2).contiguous().view(B, T, C)"),
        "F.dropout with self.training": _edit(_CSA_OK, "self.resid_dropout(self.c_proj(merge_heads(y)))",
                                              "F.dropout(self.c_proj(merge_heads(y)), self.resid_dropout.p, "
                                              "self.training)"),
    },
}
