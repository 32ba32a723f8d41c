"""Wrong or forbidden solutions to chapter 5's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py)."""
from mutant_tools import edit as _edit


# Cheats that reassign a test helper in the notebook's namespace. The helpers the tests call
# indirectly (check_tensor -> check) live in solutions.testing and are not reached by a
# reassignment in the notebook, so switching off `check` alone leaves check_tensor working.
_NO_CHECK = "\ncheck = lambda *args, **kwargs: None\n"
# ... and both checks at once: the hidden tests import them again from solutions.testing
_NO_CHECKS = "\ncheck = check_tensor = lambda *args, **kwargs: None\n"

# ---------------------------------------------------------------------------------------------
# ex1: ffn

_FFN_HEAD = "def ffn(x, W1, b1, W2, b2):\n"
_FFN = "linear(torch.relu(linear(x, W1, b1)), W2, b2)"
_FFN_OK = _FFN_HEAD + f"    return {_FFN}\n"

# ---------------------------------------------------------------------------------------------
# ex2: gelu

_GELU_HEAD = "def gelu(x, approximate='none'):\n"
_GELU_ERF = "        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))\n"
_GELU_TANH = "        return GELUTanh.apply(x)\n"
_GELU_RAISE = "    raise ValueError(f\"approximate must be 'none' or 'tanh', not {approximate!r}\")\n"
_GELU_OK = (
    _GELU_HEAD
    + "    if approximate == 'none':\n" + _GELU_ERF
    + "    if approximate == 'tanh':\n" + _GELU_TANH
    + _GELU_RAISE
)
# the tanh approximation written out (the exercise asks for chapter 2's GELUTanh)
_TANH_FORMULA = "0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))"
# forbidden: PyTorch's GELU under some name, the ValueError kept
def _GELU_VIA(call):
    return _GELU_HEAD + (
        "    if approximate not in ('none', 'tanh'):\n"
        "        raise ValueError(f'approximate must be none or tanh, not {approximate!r}')\n"
        f"    return {call}\n")

# ---------------------------------------------------------------------------------------------
# ex3: layer_norm

_LN_HEAD = "def layer_norm(x, weight=None, bias=None, eps=1e-5):\n"
_LN_AFFINE = (
    "    if weight is not None:\n"
    "        y = y * weight\n"
    "    if bias is not None:\n"
    "        y = y + bias\n"
)
_LN_OK = _LN_HEAD + (
    "    half = x.dtype in (torch.float16, torch.bfloat16)\n"
    "    y = standardize(x.float() if half else x, eps)\n"
) + _LN_AFFINE + "    return y.to(x.dtype)\n"
# the same, the two passes written out
_LN_MEAN = "    mean = h.mean(dim=-1, keepdim=True)\n"
_LN_VAR = "    var = ((h - mean) ** 2).mean(dim=-1, keepdim=True)\n"
_LN_NORM = "    y = (h - mean) / torch.sqrt(var + eps)\n"
_LN_OWN = _LN_HEAD + (
    "    half = x.dtype in (torch.float16, torch.bfloat16)\n"
    "    h = x.float() if half else x\n"
) + _LN_MEAN + _LN_VAR + _LN_NORM + _LN_AFFINE + "    return y.to(x.dtype)\n"
# forbidden: a normalisation of PyTorch's does the work
_LN_VIA = _LN_HEAD + "    C = x.shape[-1]\n" + "    y = {call}\n" + _LN_AFFINE + "    return y\n"
_NO_NORMALIZATION = "\nNORMALIZATION = ()\n"

# ---------------------------------------------------------------------------------------------
# ex4: MLP

_MLP_INIT = (
    "class MLP(nn.Module):\n"
    "    def __init__(self, config):\n"
    "        super().__init__()\n"
    "        self.config = config\n"
)
_MLP_C_FC = "        self.c_fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)\n"
_MLP_C_PROJ = "        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)\n"
_MLP_FWD = "self.dropout(self.c_proj(self.gelu(self.c_fc(x))))"
_MLP_OK = _MLP_INIT + (
    _MLP_C_FC
    + "        self.gelu = nn.GELU(approximate='tanh')\n"
    + _MLP_C_PROJ
    + "        self.dropout = nn.Dropout(config.dropout)\n"
    "    def forward(self, x):\n"
    f"        return {_MLP_FWD}\n"
)
# a cheat: the tests' oracle replaced by the learner's module itself
_NO_MLP_ORACLE = "\nmlp_oracle = lambda ours, x, training=False: ours(x)\n"

# ---------------------------------------------------------------------------------------------
# ex5: Block

_BLOCK_LN_1 = "        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)\n"
_BLOCK_ATTN = "        self.attn = CausalSelfAttention(config)\n"
_BLOCK_LN_2 = "        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)\n"
_BLOCK_MLP = "        self.mlp = MLP(config)\n"
_BLOCK_INIT = (
    "class Block(nn.Module):\n"
    "    def __init__(self, config):\n"
    "        super().__init__()\n"
    "        self.config = config\n"
) + _BLOCK_LN_1 + _BLOCK_ATTN + _BLOCK_LN_2 + _BLOCK_MLP
_BLOCK_ATTN_LINE = "        x = x + self.attn(self.ln_1(x))\n"
_BLOCK_MLP_LINE = "        x = x + self.mlp(self.ln_2(x))\n"
_BLOCK_FWD = _BLOCK_ATTN_LINE + _BLOCK_MLP_LINE
_BLOCK_OK = _BLOCK_INIT + "    def forward(self, x):\n" + _BLOCK_FWD + "        return x\n"
# the attention written into the block, without the causal mask
_BLOCK_INLINE_ATTN = (
    "        a, h = self.attn, self.config.n_head\n"
    "        B, T, C = x.shape\n"
    "        q, k, v = (t.reshape(B, T, h, C // h).transpose(1, 2)\n"
    "                   for t in a.c_attn(self.ln_1(x)).split(C, dim=-1))\n"
    "        p = self.config.dropout if self.training else 0.0\n"
    "        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)\n"
    "        x = x + a.resid_dropout(a.c_proj(y.transpose(1, 2).reshape(B, T, C)))\n"
)
# a cheat: the tests' oracles replaced by the learner's block itself
_NO_BLOCK_ORACLES = (
    "\nblock_oracle = lambda block, x, norm_first=True: block(x)\n"
    "block_dropout_oracle = lambda block, x, seed, norm_first=True: seeded(seed, lambda: block(x))\n"
)

# ---------------------------------------------------------------------------------------------
# ex6: PostLNBlock and layer_grad_norms (one solution cell)

_POST_FWD = (
    "        x = self.ln_1(x + self.attn(x))\n"
    "        x = self.ln_2(x + self.mlp(x))\n"
)
_POST_OK = (
    "class PostLNBlock(Block):\n"
    "    def forward(self, x):\n"
) + _POST_FWD + "        return x\n"
_NORMS_HEAD = "def layer_grad_norms(blocks, x, loss_fn):\n"
_NORMS_FORWARD = (
    "    y = x\n"
    "    for block in blocks:\n"
    "        y = block(y)\n"
    "    loss = loss_fn(y)\n"
)
_NORMS_GRADS = "        grads = torch.autograd.grad(loss, list(block.parameters()), retain_graph=True)\n"
_NORM = "torch.sqrt(sum((g ** 2).sum() for g in grads))"
_NORMS_BACK = (
    "    norms = []\n"
    "    for block in blocks:\n"
    + _NORMS_GRADS +
    f"        norms.append({_NORM})\n"
    "    return torch.stack(norms)\n"
)
_NORMS_OK = _NORMS_HEAD + _NORMS_FORWARD + _NORMS_BACK
_EX6_OK = _POST_OK + _NORMS_OK


def _post(old, new):
    """A PostLNBlock mistake, layer_grad_norms right."""
    return _edit(_POST_OK, old, new) + _NORMS_OK


def _norms(old, new):
    """A layer_grad_norms mistake, PostLNBlock right."""
    return _POST_OK + _edit(_NORMS_OK, old, new)


# ---------------------------------------------------------------------------------------------
# ex7: block_param_count

_COUNT_HEAD = "def block_param_count(d_model, d_ff=None, bias=True):\n"
_COUNT_D_FF = "    d_ff = 4 * d_model if d_ff is None else d_ff\n"
_COUNT_LN = "2 * (2 * d_model if bias else d_model)"
_COUNT_ATTN = "mha_param_count(d_model, 1, bias)"
_COUNT_MLP = "2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)"
_COUNT_OK = _COUNT_HEAD + _COUNT_D_FF + (
    f"    layer_norms = {_COUNT_LN}\n"
    f"    attention = {_COUNT_ATTN}\n"
    f"    mlp = {_COUNT_MLP}\n"
    "    return layer_norms + attention + mlp\n"
)
# family 4: the count read off a module (correct, but the exercise asks for the formula)
def _COUNT_VIA(cls):
    return (_COUNT_HEAD + _COUNT_D_FF +
            "    with torch.device('meta'):\n"
            f"        layer = {cls}(d_model, 1, d_ff, bias=bias)\n"
            "    return sum(p.numel() for p in layer.parameters())\n")


_COUNT_LN_VIA_MODULE = "2 * sum(p.numel() for p in nn.LayerNorm(d_model, bias=bias, device='meta').parameters())"
_COUNT_ATTN_VIA_MODULE = ("sum(p.numel() for p in nn.MultiheadAttention(d_model, 1, bias=bias, device='meta')"
                          ".parameters())")
_NO_FORBID = "\nNORMALIZATION = ATTENTION = ()\n"

MUTANTS = {
    "ex1-ffn": {
        "no ReLU": _edit(_FFN_OK, _FFN, "linear(linear(x, W1, b1), W2, b2)"),
        "ReLU after the second layer": _edit(_FFN_OK, _FFN, "torch.relu(linear(linear(x, W1, b1), W2, b2))"),
        "ReLU on the input": _edit(_FFN_OK, _FFN, "linear(linear(torch.relu(x), W1, b1), W2, b2)"),
        "ReLU after both layers": _edit(_FFN_OK, _FFN, "torch.relu(linear(torch.relu(linear(x, W1, b1)), W2, b2))"),
        "GELU instead of ReLU": _edit(_FFN_OK, _FFN, "linear(F.gelu(linear(x, W1, b1)), W2, b2)"),
        "leaky ReLU": _edit(_FFN_OK, _FFN, "linear(F.leaky_relu(linear(x, W1, b1)), W2, b2)"),
        "no b1": _edit(_FFN_OK, _FFN, "linear(torch.relu(linear(x, W1)), W2, b2)"),
        "no b2": _edit(_FFN_OK, _FFN, "linear(torch.relu(linear(x, W1, b1)), W2)"),
        "b1 added after the ReLU": _edit(_FFN_OK, _FFN, "linear(torch.relu(linear(x, W1)) + b1, W2, b2)"),
        "the paper's layout x @ W1 (no transpose)": _edit(_FFN_OK, _FFN, "torch.relu(x @ W1 + b1) @ W2 + b2"),
        "W1 and W2 swapped": _edit(_FFN_OK, _FFN, "linear(torch.relu(linear(x, W2.T, b1)), W1.T, b2)"),
        "flattened to 2-D and not reshaped back": _edit(
            _FFN_OK, _FFN, "linear(torch.relu(linear(x.reshape(-1, x.shape[-1]), W1, b1)), W2, b2)"),
        "view instead of reshape (non-contiguous input)": _edit(
            _FFN_OK, _FFN,
            "linear(torch.relu(linear(x.view(-1, x.shape[-1]), W1, b1)), W2, b2).view(*x.shape[:-1], -1)"),
        "transposes the weights in place": _edit(_FFN_OK, _FFN, "torch.relu(x @ W1.t_() + b1) @ W2.t_() + b2"),
        "ReLU in place on the input": _edit(_FFN_OK, _FFN,
                                            "linear(torch.relu(linear(x, W1, b1)), W2, b2) + 0 * x.relu_()"),
        "max(0, .) with a new CPU zeros tensor (meta device)": _edit(
            _FFN_OK, _FFN, "linear(torch.maximum(linear(x, W1, b1), torch.zeros(x.shape[:-1] + (W1.shape[0],),"
                           " dtype=x.dtype)), W2, b2)"),
        "computed in float32": _edit(_FFN_OK, _FFN, "linear(torch.relu(linear(x.float(), W1.float(), b1.float())), "
                                                    "W2.float(), b2.float())"),
        "computed under torch.no_grad()": _edit(_FFN_OK, f"    return {_FFN}\n",
                                                f"    with torch.no_grad():\n        return {_FFN}\n"),
        "no ReLU, check switched off": _edit(_FFN_OK, _FFN, "linear(linear(x, W1, b1), W2, b2)") + _NO_CHECK,
        "no ReLU, check and check_tensor switched off": _edit(_FFN_OK, _FFN, "linear(linear(x, W1, b1), W2, b2)")
                                                        + _NO_CHECKS,
    },
    "ex2-gelu": {
        "tanh approximation for both": _edit(_GELU_OK, _GELU_ERF, _GELU_TANH),
        "erf for both": _edit(_GELU_OK, _GELU_TANH, _GELU_ERF),
        "erf(x) without the 1 / sqrt(2)": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))", "torch.erf(x)"),
        "erf(x / 2)": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))", "torch.erf(x / 2.0)"),
        "erf(x * sqrt(2))": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))", "torch.erf(x * math.sqrt(2.0))"),
        "no factor 1/2": _edit(_GELU_OK, "0.5 * x * (1.0 + torch.erf", "x * (1.0 + torch.erf"),
        "Phi(x) without the x": _edit(_GELU_OK, "0.5 * x * (1.0 + torch.erf", "0.5 * (1.0 + torch.erf"),
        "x * erf (no 1 +)": _edit(_GELU_OK, "(1.0 + torch.erf(x / math.sqrt(2.0)))", "torch.erf(x / math.sqrt(2.0))"),
        "sigmoid approximation x * sigmoid(1.702 x)": _edit(_GELU_OK, _GELU_ERF,
                                                            "        return x * torch.sigmoid(1.702 * x)\n"),
        "tanh written out with 0.44715": _edit(_GELU_OK, _GELU_TANH,
                                               f"        return {_TANH_FORMULA.replace('0.044715', '0.44715')}\n"),
        "tanh written out without sqrt(2 / pi)": _edit(
            _GELU_OK, _GELU_TANH, "        return 0.5 * x * (1.0 + torch.tanh(x + 0.044715 * x ** 3))\n"),
        "tanh written out with exp (overflows for large |x|)": _edit(
            _GELU_OK, _GELU_TANH,
            "        z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)\n"
            "        return 0.5 * x * (1.0 + (torch.exp(2 * z) - 1) / (torch.exp(2 * z) + 1))\n"),
        "default approximate='tanh'": _edit(_GELU_OK, _GELU_HEAD, "def gelu(x, approximate='tanh'):\n"),
        "no ValueError: anything else is the exact GELU": _edit(_GELU_OK, _GELU_RAISE, _GELU_ERF[4:]),
        "no ValueError: returns None": _edit(_GELU_OK, _GELU_RAISE, ""),
        "ValueError without the value": _edit(_GELU_OK, _GELU_RAISE,
                                              "    raise ValueError(\"approximate must be 'none' or 'tanh'\")\n"),
        "assert instead of ValueError": _edit(_GELU_OK, _GELU_RAISE,
                                              "    assert False, f'unknown approximate={approximate!r}'\n"),
        "TypeError instead of ValueError": _edit(_GELU_OK, _GELU_RAISE,
                                                 "    raise TypeError(f'unknown approximate={approximate!r}')\n"),
        "case-insensitive ('Tanh' accepted)": _edit(_GELU_OK, "    if approximate == 'none':\n",
                                                    "    approximate = str(approximate).lower()\n"
                                                    "    if approximate == 'none':\n"),
        "None accepted as the exact GELU": _edit(_GELU_OK, "if approximate == 'none':",
                                                 "if approximate in ('none', None):"),
        "'exact' accepted": _edit(_GELU_OK, "if approximate == 'none':", "if approximate in ('none', 'exact'):"),
        "divides x in place": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))", "torch.erf(x.div_(math.sqrt(2.0)))"),
        "Phi detached (gradient Phi only)": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))",
                                                  "torch.erf(x.detach() / math.sqrt(2.0))"),
        "tanh computed in float32": _edit(_GELU_OK, "GELUTanh.apply(x)", "GELUTanh.apply(x.float())"),
        "sqrt(2) as a 1-element CPU tensor": _edit(_GELU_OK, "torch.erf(x / math.sqrt(2.0))",
                                                   "torch.erf(x / torch.tensor([math.sqrt(2.0)]))"),
        "family 4: F.gelu": _GELU_VIA("F.gelu(x, approximate=approximate)"),
        "family 4: nn.GELU": _GELU_VIA("nn.GELU(approximate=approximate)(x)"),
        "family 4: torch._C._nn.gelu": _GELU_VIA("torch._C._nn.gelu(x, approximate=approximate)"),
        "family 4: torch.ops.aten.gelu": _GELU_VIA("torch.ops.aten.gelu(x, approximate=approximate)"),
        "family 4: ORACLE.gelu": _GELU_VIA("ORACLE.gelu(x, approximate=approximate)"),
        "family 4: F.gelu by getattr": _GELU_VIA("getattr(F, 'ge' + 'lu')(x, approximate=approximate)"),
        "family 4: an alias of F.gelu taken before the test": "_gelu = F.gelu\n" + _GELU_VIA(
            "_gelu(x, approximate=approximate)"),
        "family 4: nn.GELU modules made before the test": "_GELUS = {m: nn.GELU(approximate=m) for m in "
                                                          "('none', 'tanh')}\n"
                                                          + _GELU_VIA("_GELUS[approximate](x)"),
        "family 4: F.gelu for 'none' only": _edit(_GELU_OK, _GELU_ERF, "        return F.gelu(x)\n"),
        "family 4: F.gelu, GELU emptied": _GELU_VIA("F.gelu(x, approximate=approximate)")
                                          + "\nGELU = ()\n",
        "tanh for both, check switched off": _edit(_GELU_OK, _GELU_ERF, _GELU_TANH) + _NO_CHECK,
        "tanh for both, check and check_tensor switched off": _edit(_GELU_OK, _GELU_ERF, _GELU_TANH) + _NO_CHECKS,
        "no ValueError, check_raises switched off": _edit(_GELU_OK, _GELU_RAISE, _GELU_ERF[4:])
                                                    + "\ncheck_raises = lambda *args, **kwargs: ValueError('erf')\n",
    },
    "ex3-layer-norm": {
        "unbiased variance (x.var)": _edit(_LN_OWN, _LN_VAR, "    var = h.var(dim=-1, keepdim=True)\n"),
        "unbiased variance (divides by C - 1)": _edit(
            _LN_OWN, _LN_VAR, "    var = ((h - mean) ** 2).sum(dim=-1, keepdim=True) / (h.shape[-1] - 1)\n"),
        "eps outside the sqrt": _edit(_LN_OWN, _LN_NORM, "    y = (h - mean) / (torch.sqrt(var) + eps)\n"),
        "eps added to the std (x.std + eps)": _edit(
            _LN_OWN, _LN_NORM, "    y = (h - mean) / (h.std(dim=-1, keepdim=True, correction=0) + eps)\n"),
        "no eps": _edit(_LN_OWN, _LN_NORM, "    y = (h - mean) / torch.sqrt(var)\n"),
        "eps ignored (1e-5 always)": _edit(_LN_OWN, _LN_NORM, "    y = (h - mean) / torch.sqrt(var + 1e-5)\n"),
        "eps not passed to standardize": _edit(_LN_OK, "standardize(x.float() if half else x, eps)",
                                               "standardize(x.float() if half else x)"),
        "divides by the variance": _edit(_LN_OWN, _LN_NORM, "    y = (h - mean) / (var + eps)\n"),
        "no mean subtracted (RMSNorm)": _edit(_LN_OWN, _LN_NORM, "    y = h / torch.sqrt(var + eps)\n"),
        "E[x^2] - E[x]^2": _edit(_LN_OWN, _LN_VAR, "    var = (h ** 2).mean(dim=-1, keepdim=True) - mean ** 2\n"),
        "E[x^2] - E[x]^2, clamped at 0": _edit(
            _LN_OWN, _LN_VAR, "    var = ((h ** 2).mean(dim=-1, keepdim=True) - mean ** 2).clamp(min=0)\n"),
        "E[x^2] - E[x]^2 in float64": _edit(
            _LN_OWN, _LN_VAR,
            "    var = ((h.double() ** 2).mean(dim=-1, keepdim=True) - mean.double() ** 2).to(h.dtype)\n"),
        "over the first axis": _edit(_LN_OWN, "dim=-1", "dim=0"),
        "over all axes": _edit(_LN_OWN, "mean(dim=-1, keepdim=True)", "mean()"),
        "over the last two axes": _edit(_LN_OWN, "dim=-1", "dim=(-2, -1)"),
        "keepdim forgotten": _edit(_LN_OWN, ", keepdim=True", ""),
        "no float32 upcast": _edit(_LN_OWN, "half = x.dtype in (torch.float16, torch.bfloat16)", "half = False"),
        "float16 upcast only": _edit(_LN_OWN, "half = x.dtype in (torch.float16, torch.bfloat16)",
                                     "half = x.dtype == torch.float16"),
        "bfloat16 upcast only": _edit(_LN_OWN, "half = x.dtype in (torch.float16, torch.bfloat16)",
                                      "half = x.dtype == torch.bfloat16"),
        "returns float32 for half inputs": _edit(_LN_OWN, "    return y.to(x.dtype)\n", "    return y\n"),
        "float64 computed in float32": _edit(_LN_OWN, "    h = x.float() if half else x\n", "    h = x.float()\n"),
        "weight ignored when bias is None": _edit(_LN_OWN, "if weight is not None:",
                                                  "if weight is not None and bias is not None:"),
        "bias ignored when weight is None": _edit(_LN_OWN, "if bias is not None:",
                                                  "if bias is not None and weight is not None:"),
        "weight and bias in the wrong order": _edit(_LN_OWN, _LN_HEAD,
                                                    "def layer_norm(x, bias=None, weight=None, eps=1e-5):\n"),
        "bias scaled by the weight": _edit(_LN_OWN, "        y = y + bias\n",
                                           "        y = y + bias * (weight if weight is not None else 1)\n"),
        "x centred in place": _edit(_LN_OWN, _LN_VAR + _LN_NORM,
                                    "    h -= mean\n"
                                    "    var = (h ** 2).mean(dim=-1, keepdim=True)\n"
                                    "    y = h / torch.sqrt(var + eps)\n"),
        "mean and variance detached": _edit(_edit(_LN_OWN, _LN_MEAN, _LN_MEAN[:-1] + ".detach()\n"),
                                            _LN_VAR, _LN_VAR[:-1] + ".detach()\n"),
        "variance detached": _edit(_LN_OWN, _LN_VAR, _LN_VAR[:-1] + ".detach()\n"),
        "eps as a 1-element CPU tensor (meta device)": _edit(_LN_OWN, "torch.sqrt(var + eps)",
                                                             "torch.sqrt(var + torch.tensor([eps]))"),
        "family 4: F.layer_norm": _LN_HEAD + "    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)\n",
        "family 4: ORACLE.layer_norm": _LN_HEAD
                                       + "    return ORACLE.layer_norm(x, (x.shape[-1],), weight, bias, eps)\n",
        "family 4: torch.layer_norm": _LN_HEAD + "    return torch.layer_norm(x, (x.shape[-1],), weight, bias, eps)\n",
        "family 4: an alias of F.layer_norm taken before the test": (
            "_ln = F.layer_norm\n" + _LN_HEAD + "    return _ln(x, (x.shape[-1],), weight, bias, eps)\n"),
        "family 4: nn.LayerNorm": _LN_VIA.format(
            call="nn.LayerNorm(C, eps=eps, elementwise_affine=False, device=x.device, dtype=x.dtype)(x)"),
        "family 4: ORACLE.LayerNorm": _LN_VIA.format(
            call="ORACLE.LayerNorm(C, eps=eps, elementwise_affine=False, device=x.device, dtype=x.dtype)(x)"),
        "family 4: torch.native_layer_norm": _LN_VIA.format(
            call="torch.native_layer_norm(x, (C,), None, None, eps)[0]"),
        "family 4: torch.ops.aten.native_layer_norm": _LN_VIA.format(
            call="torch.ops.aten.native_layer_norm(x, [C], None, None, eps)[0]"),
        "family 4: F.group_norm with one group": _LN_VIA.format(
            call="F.group_norm(x.reshape(-1, C), 1, eps=eps).reshape(x.shape)"),
        "family 4: F.instance_norm over the rows": _LN_VIA.format(
            call="F.instance_norm(x.reshape(1, -1, C), eps=eps).reshape(x.shape)"),
        "family 4: F.batch_norm of the transposed rows": _LN_VIA.format(
            call="F.batch_norm(x.reshape(-1, C).T, None, None, training=True, eps=eps).T.reshape(x.shape)"),
        "family 4: F.rms_norm of x - mean": _LN_VIA.format(
            call="F.rms_norm(x - x.mean(dim=-1, keepdim=True), (C,), eps=eps)"),
        "family 4: F.normalize of x - mean": _LN_VIA.format(
            call="F.normalize(x - x.mean(dim=-1, keepdim=True), dim=-1) * math.sqrt(C)"),
        "family 4: F.layer_norm, NORMALIZATION emptied": (
            _LN_HEAD + "    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)\n" + _NO_NORMALIZATION),
        "unbiased variance, check switched off": _edit(_LN_OWN, _LN_VAR, "    var = h.var(dim=-1, keepdim=True)\n")
                                                 + _NO_CHECK,
        "unbiased variance, check and check_tensor switched off": _edit(
            _LN_OWN, _LN_VAR, "    var = h.var(dim=-1, keepdim=True)\n") + _NO_CHECKS,
    },
    "ex4-mlp": {
        "ReLU instead of GELU": _edit(_MLP_OK, "nn.GELU(approximate='tanh')", "nn.ReLU()"),
        "exact GELU instead of tanh": _edit(_MLP_OK, "nn.GELU(approximate='tanh')", "nn.GELU()"),
        "no GELU": _edit(_MLP_OK, _MLP_FWD, "self.dropout(self.c_proj(self.c_fc(x)))"),
        "GELU after c_proj": _edit(_MLP_OK, _MLP_FWD, "self.dropout(self.gelu(self.c_proj(self.c_fc(x))))"),
        "GELU after c_proj too": _edit(_MLP_OK, _MLP_FWD,
                                       "self.dropout(self.gelu(self.c_proj(self.gelu(self.c_fc(x)))))"),
        "dropout on the hidden layer": _edit(_MLP_OK, _MLP_FWD, "self.c_proj(self.dropout(self.gelu(self.c_fc(x))))"),
        "dropout on the hidden layer and the output": _edit(
            _MLP_OK, _MLP_FWD, "self.dropout(self.c_proj(self.dropout(self.gelu(self.c_fc(x)))))"),
        "dropout on the input": _edit(_MLP_OK, _MLP_FWD, "self.c_proj(self.gelu(self.c_fc(self.dropout(x))))"),
        "no dropout": _edit(_MLP_OK, _MLP_FWD, "self.c_proj(self.gelu(self.c_fc(x)))"),
        "hard-coded p = 0.1": _edit(_MLP_OK, "nn.Dropout(config.dropout)", "nn.Dropout(0.1)"),
        "dropout in eval mode too (F.dropout's default training=True)": _edit(
            _MLP_OK, _MLP_FWD, "F.dropout(self.c_proj(self.gelu(self.c_fc(x))), self.config.dropout)"),
        "F.dropout with its default p = 0.5": _edit(
            _MLP_OK, _MLP_FWD, "F.dropout(self.c_proj(self.gelu(self.c_fc(x))), training=self.training)"),
        "d_ff ignored (4 * d_model)": _edit(_MLP_OK, "config.d_ff", "4 * config.d_model"),
        "d_ff ignored (d_model)": _edit(_MLP_OK, "config.d_ff", "config.d_model"),
        "bias flag ignored": _edit(_MLP_OK, ", bias=config.bias", ""),
        "c_proj without bias": _edit(_MLP_OK, _MLP_C_PROJ, _MLP_C_PROJ.replace("bias=config.bias", "bias=False")),
        "c_fc without bias": _edit(_MLP_OK, _MLP_C_FC, _MLP_C_FC.replace("bias=config.bias", "bias=False")),
        "c_proj created before c_fc": _edit(_edit(_MLP_OK, _MLP_C_FC, ""), _MLP_C_PROJ, _MLP_C_PROJ + _MLP_C_FC),
        "names fc1 and fc2": _MLP_OK.replace("c_fc", "fc1").replace("c_proj", "fc2"),
        "c_fc with c_proj's shape": _edit(_MLP_OK, _MLP_C_FC, _MLP_C_PROJ.replace("c_proj", "c_fc")),
        "one nn.Sequential": _MLP_INIT + (
            "        self.net = nn.Sequential(\n"
            "            nn.Linear(config.d_model, config.d_ff, bias=config.bias), nn.GELU(approximate='tanh'),\n"
            "            nn.Linear(config.d_ff, config.d_model, bias=config.bias), nn.Dropout(config.dropout))\n"
            "    def forward(self, x):\n"
            "        return self.net(x)\n"),
        "residual inside the MLP": _edit(_MLP_OK, f"return {_MLP_FWD}", f"return x + {_MLP_FWD}"),
        "reseeds in forward": _edit(_MLP_OK, f"        return {_MLP_FWD}\n",
                                    f"        torch.manual_seed(0)\n        return {_MLP_FWD}\n"),
        "x modified in place": _edit(_MLP_OK, f"        return {_MLP_FWD}\n",
                                     "        h = self.gelu(self.c_fc(x))\n"
                                     "        x.zero_()\n"
                                     "        return self.dropout(self.c_proj(h))\n"),
        "ReLU, check switched off": _edit(_MLP_OK, "nn.GELU(approximate='tanh')", "nn.ReLU()") + _NO_CHECK,
        "ReLU, check and check_tensor switched off": _edit(_MLP_OK, "nn.GELU(approximate='tanh')", "nn.ReLU()")
                                                     + _NO_CHECKS,
        "ReLU, mlp_oracle replaced by the module": _edit(_MLP_OK, "nn.GELU(approximate='tanh')", "nn.ReLU()")
                                                   + _NO_MLP_ORACLE,
    },
    "ex5-block": {
        "Post-LN order": _edit(_BLOCK_OK, _BLOCK_FWD, _POST_FWD),
        "no residual around the attention": _edit(_BLOCK_OK, _BLOCK_ATTN_LINE, "        x = self.attn(self.ln_1(x))\n"),
        "no residual around the MLP": _edit(_BLOCK_OK, _BLOCK_MLP_LINE, "        x = self.mlp(self.ln_2(x))\n"),
        "no residuals": _edit(_BLOCK_OK, _BLOCK_FWD, "        x = self.mlp(self.ln_2(self.attn(self.ln_1(x))))\n"),
        "ln_1 used twice": _edit(_BLOCK_OK, "self.mlp(self.ln_2(x))", "self.mlp(self.ln_1(x))"),
        "ln_2 used twice": _edit(_BLOCK_OK, "self.attn(self.ln_1(x))", "self.attn(self.ln_2(x))"),
        "ln_1 and ln_2 swapped": _edit(_edit(_BLOCK_OK, "self.attn(self.ln_1(x))", "self.attn(self.ln_2(x))"),
                                       "self.mlp(self.ln_2(x))", "self.mlp(self.ln_1(x))"),
        "residual adds the normalised input": _edit(_BLOCK_OK, _BLOCK_FWD,
                                                    "        h = self.ln_1(x)\n"
                                                    "        x = h + self.attn(h)\n"
                                                    "        h = self.ln_2(x)\n"
                                                    "        x = h + self.mlp(h)\n"),
        "parallel sublayers (both read x)": _edit(_BLOCK_OK, _BLOCK_FWD,
                                                  "        x = x + self.attn(self.ln_1(x)) + self.mlp(self.ln_2(x))\n"),
        "second residual adds the block's input": _edit(_BLOCK_OK, _BLOCK_FWD,
                                                        "        h = x + self.attn(self.ln_1(x))\n"
                                                        "        x = x + self.mlp(self.ln_2(h))\n"),
        "MLP before attention": _edit(_BLOCK_OK, _BLOCK_FWD, _BLOCK_MLP_LINE + _BLOCK_ATTN_LINE),
        "no LayerNorm before the MLP": _edit(_BLOCK_OK, "self.mlp(self.ln_2(x))", "self.mlp(x)"),
        "LayerNorm on the sublayers' outputs": _edit(_BLOCK_OK, _BLOCK_FWD,
                                                     "        x = x + self.ln_1(self.attn(x))\n"
                                                     "        x = x + self.ln_2(self.mlp(x))\n"),
        "a final LayerNorm in the block": _edit(_edit(_BLOCK_OK, _BLOCK_MLP,
                                                      _BLOCK_MLP + _BLOCK_LN_2.replace("ln_2", "ln_f")),
                                                "        return x\n", "        return self.ln_f(x)\n"),
        "LayerNorm biases always": _edit(_BLOCK_OK, "nn.LayerNorm(config.d_model, bias=config.bias)",
                                         "nn.LayerNorm(config.d_model)"),
        "LayerNorm gain switched off with bias=False": _edit(
            _BLOCK_OK, "nn.LayerNorm(config.d_model, bias=config.bias)",
            "nn.LayerNorm(config.d_model, elementwise_affine=config.bias)"),
        "attention biases always": _edit(_BLOCK_OK, _BLOCK_ATTN,
                                         "        import dataclasses\n"
                                         "        self.attn = CausalSelfAttention(dataclasses.replace(config, "
                                         "bias=True))\n"),
        "modules in the order ln_1, ln_2, attn, mlp": _edit(_edit(_BLOCK_OK, _BLOCK_ATTN, ""),
                                                           _BLOCK_LN_2, _BLOCK_LN_2 + _BLOCK_ATTN),
        "names norm1 and norm2": _BLOCK_OK.replace("ln_1", "norm1").replace("ln_2", "norm2"),
        "x updated in place": _edit(_BLOCK_OK, _BLOCK_FWD,
                                    "        x += self.attn(self.ln_1(x))\n"
                                    "        x += self.mlp(self.ln_2(x))\n"),
        "an extra dropout on the residual stream": _edit(
            _edit(_BLOCK_OK, _BLOCK_MLP, _BLOCK_MLP + "        self.drop = nn.Dropout(config.dropout)\n"),
            _BLOCK_ATTN_LINE, "        x = self.drop(x + self.attn(self.ln_1(x)))\n"),
        "attention inlined without the causal mask": _edit(_BLOCK_OK, _BLOCK_ATTN_LINE, _BLOCK_INLINE_ATTN),
        "Post-LN, check switched off": _edit(_BLOCK_OK, _BLOCK_FWD, _POST_FWD) + _NO_CHECK,
        "Post-LN, check and check_tensor switched off": _edit(_BLOCK_OK, _BLOCK_FWD, _POST_FWD) + _NO_CHECKS,
        "Post-LN, oracles replaced by the block": _edit(_BLOCK_OK, _BLOCK_FWD, _POST_FWD) + _NO_BLOCK_ORACLES,
        "not causal, oracles and first_leak replaced": _edit(_BLOCK_OK, _BLOCK_ATTN_LINE, _BLOCK_INLINE_ATTN)
                                                       + _NO_BLOCK_ORACLES
                                                       + "first_leak = lambda *args, **kwargs: None\n",
    },
    "ex6-post-ln": {
        "Pre-LN order": _post(_POST_FWD, _BLOCK_FWD),
        "Block's forward inherited (no override)": _edit(_POST_OK, "    def forward(self, x):\n" + _POST_FWD
                                                         + "        return x\n", "    pass\n") + _NORMS_OK,
        "ln_1 and ln_2 swapped": _post(_POST_FWD, "        x = self.ln_2(x + self.attn(x))\n"
                                                  "        x = self.ln_1(x + self.mlp(x))\n"),
        "ln_1 used twice": _post("self.ln_2(x + self.mlp(x))", "self.ln_1(x + self.mlp(x))"),
        "no residual around the attention": _post("self.ln_1(x + self.attn(x))", "self.ln_1(self.attn(x))"),
        "no residual around the MLP": _post("self.ln_2(x + self.mlp(x))", "self.ln_2(self.mlp(x))"),
        "LayerNorm before the residual addition": _post(_POST_FWD, "        x = x + self.ln_1(self.attn(x))\n"
                                                                   "        x = x + self.ln_2(self.mlp(x))\n"),
        "no LayerNorm after the MLP": _post("self.ln_2(x + self.mlp(x))", "x + self.mlp(x)"),
        "MLP before attention": _post(_POST_FWD, "        x = self.ln_1(x + self.mlp(x))\n"
                                                 "        x = self.ln_2(x + self.attn(x))\n"),
        "second residual adds the block's input": _post(_POST_FWD, "        h = self.ln_1(x + self.attn(x))\n"
                                                                   "        x = self.ln_2(x + self.mlp(h))\n"),
        "x updated in place": _post(_POST_FWD, "        x += self.attn(x)\n"
                                               "        x = self.ln_1(x)\n"
                                               "        x = self.ln_2(x + self.mlp(x))\n"),
        "loss.backward() accumulating .grad": _norms(_NORMS_BACK,
                                                     "    loss.backward()\n"
                                                     "    return torch.stack([torch.sqrt(sum((p.grad ** 2).sum() "
                                                     "for p in block.parameters())) for block in blocks])\n"),
        "sum of per-parameter norms": _norms(_NORM, "sum(g.norm() for g in grads)"),
        "squared norm": _norms(_NORM, "sum((g ** 2).sum() for g in grads)"),
        "root of the mean of squares": _norms(_NORM, "torch.sqrt(sum((g ** 2).mean() for g in grads))"),
        "largest per-parameter norm": _norms(_NORM, "max(g.norm() for g in grads)"),
        "mean of per-parameter norms": _norms(_NORM, "torch.stack([g.norm() for g in grads]).mean()"),
        "first parameter only": _norms(_NORM, "grads[0].norm()"),
        "weight matrices only": _norms("list(block.parameters())", "[p for p in block.parameters() if p.dim() > 1]"),
        "norms in the reverse order": _norms("    return torch.stack(norms)\n",
                                             "    return torch.stack(norms[::-1])\n"),
        "blocks applied in the reverse order": _norms(
            "    for block in blocks:\n        y = block(y)\n",
            "    for block in reversed(list(blocks)):\n        y = block(y)\n"),
        "only the first block applied": _norms("    for block in blocks:\n        y = block(y)\n",
                                               "    y = list(blocks)[0](y)\n"),
        "no retain_graph": _norms(", retain_graph=True", ""),
        "the gradient with respect to each block's output": _norms(
            _NORMS_FORWARD + _NORMS_BACK,
            "    ys, y = [], x\n"
            "    for block in blocks:\n"
            "        y = block(y)\n"
            "        ys.append(y)\n"
            "    grads = torch.autograd.grad(loss_fn(y), ys)\n"
            "    return torch.stack([g.norm() for g in grads])\n"),
        "a new tensor of .item() floats (float32)": _norms("    return torch.stack(norms)\n",
                                                           "    return torch.tensor([n.item() for n in norms])\n"),
        "a list of tensors": _norms("    return torch.stack(norms)\n", "    return norms\n"),
        "norms returned in float64": _norms("    return torch.stack(norms)\n",
                                            "    return torch.stack(norms).double()\n"),
        "Pre-LN order, check switched off": _post(_POST_FWD, _BLOCK_FWD) + _NO_CHECK,
        "squared norm, check and check_tensor switched off": _norms(_NORM, "sum((g ** 2).sum() for g in grads)")
                                                             + _NO_CHECKS,
        "squared norm, grad_norms_oracle replaced": _norms(_NORM, "sum((g ** 2).sum() for g in grads)")
                                                    + "\ngrad_norms_oracle = layer_grad_norms\n",
        "Pre-LN order, oracles replaced": _post(_POST_FWD, _BLOCK_FWD) + (
            "\nblock_oracle = lambda block, x, norm_first=True: PostLNBlock.forward(block, x)\n"
            "block_dropout_oracle = lambda block, x, seed, norm_first=True: "
            "seeded(seed, lambda: PostLNBlock.forward(block, x))\n"),
    },
    "ex7-param-count": {
        "LayerNorm biases forgotten": _edit(_COUNT_OK, _COUNT_LN, "2 * d_model"),
        "LayerNorm biases counted with bias=False": _edit(_COUNT_OK, _COUNT_LN, "4 * d_model"),
        "one LayerNorm": _edit(_COUNT_OK, _COUNT_LN, "(2 * d_model if bias else d_model)"),
        "no LayerNorms": _edit(_COUNT_OK, _COUNT_LN, "0"),
        "three LayerNorms": _edit(_COUNT_OK, _COUNT_LN, "3 * (2 * d_model if bias else d_model)"),
        "LayerNorm of d_ff in the MLP": _edit(_COUNT_OK, _COUNT_LN,
                                              "2 * d_model + 2 * d_ff if bias else d_model + d_ff"),
        "3 * d_model * d_ff (three matrices)": _edit(_COUNT_OK, "2 * d_model * d_ff", "3 * d_model * d_ff"),
        "one MLP matrix": _edit(_COUNT_OK, "2 * d_model * d_ff", "d_model * d_ff"),
        "MLP biases 2 * d_ff": _edit(_COUNT_OK, "(d_ff + d_model) if bias", "2 * d_ff if bias"),
        "MLP biases 2 * d_model": _edit(_COUNT_OK, "(d_ff + d_model) if bias", "2 * d_model if bias"),
        "MLP bias of c_fc only": _edit(_COUNT_OK, "(d_ff + d_model) if bias", "d_ff if bias"),
        "d_ff ignored": _edit(_COUNT_OK, _COUNT_D_FF, "    d_ff = 4 * d_model\n"),
        "d_ff defaults to d_model": _edit(_COUNT_OK, _COUNT_D_FF, "    d_ff = d_model if d_ff is None else d_ff\n"),
        "bias flag ignored": _edit(_COUNT_OK, _COUNT_D_FF, _COUNT_D_FF + "    bias = True\n"),
        "attention without biases": _edit(_COUNT_OK, _COUNT_ATTN, "mha_param_count(d_model, 1, False)"),
        "attention with three matrices": _edit(_COUNT_OK, _COUNT_ATTN,
                                               "3 * d_model * d_model + (3 * d_model if bias else 0)"),
        "attention's bias flag left at its default": _edit(_COUNT_OK, _COUNT_ATTN, "mha_param_count(d_model, 1)"),
        "mha_param_count with GPT-2's 12 heads": _edit(_COUNT_OK, _COUNT_ATTN, "mha_param_count(d_model, 12, bias)"),
        "12 d^2 + 13 d always": _COUNT_HEAD + "    return 12 * d_model ** 2 + 13 * d_model\n",
        "a float (d_ff = 4.0 * d_model)": _edit(_COUNT_OK, "d_ff = 4 * d_model if", "d_ff = 4.0 * d_model if"),
        "a float (true division)": _edit(_COUNT_OK, _COUNT_LN, "4 * d_model / (1 if bias else 2)"),
        "a tensor": _edit(_COUNT_OK, "    return layer_norms + attention + mlp\n",
                          "    return torch.tensor(layer_norms + attention + mlp)\n"),
        "memorised GPT-2 sizes": _COUNT_HEAD + ("    return {768: 7_087_872, 1024: 12_596_224, 1280: 19_677_440,"
                                                " 1600: 30_740_800}.get(d_model, 12 * d_model ** 2 + 13 * d_model)\n"),
        "family 4: counts nn.TransformerEncoderLayer": _COUNT_VIA("nn.TransformerEncoderLayer"),
        "family 4: counts ORACLE.TransformerEncoderLayer": _COUNT_VIA("ORACLE.TransformerEncoderLayer"),
        "family 4: counts an alias taken before the test": "_TEL = nn.TransformerEncoderLayer\n" + _COUNT_VIA("_TEL"),
        "family 4: counts a subclass": "class _L(nn.TransformerEncoderLayer):\n    pass\n" + _COUNT_VIA("_L"),
        "family 4: counts the chapter's Block": _COUNT_HEAD + (
            "    with torch.device('meta'):\n"
            "        block = Block(BlockConfig(d_model=d_model, n_head=1, d_ff=d_ff, bias=bias))\n"
            "    return sum(p.numel() for p in block.parameters())\n"),
        "family 4: counts nn.LayerNorm": _edit(_COUNT_OK, _COUNT_LN, _COUNT_LN_VIA_MODULE),
        "family 4: counts nn.MultiheadAttention": _edit(_COUNT_OK, _COUNT_ATTN, _COUNT_ATTN_VIA_MODULE),
        "family 4: counts nn.TransformerEncoderLayer, ATTENTION and NORMALIZATION emptied":
            _COUNT_VIA("nn.TransformerEncoderLayer") + _NO_FORBID,
        "LayerNorm biases forgotten, check switched off": _edit(_COUNT_OK, _COUNT_LN, "2 * d_model") + _NO_CHECK,
        "LayerNorm biases forgotten, check and check_tensor switched off": _edit(_COUNT_OK, _COUNT_LN, "2 * d_model")
                                                                           + _NO_CHECKS,
    },
}

# Correct solutions written another way: each must pass the visible and hidden tests
# (tests/test_mutants.py::test_correct_variants_pass).
CORRECT = {
    "ex1-ffn": {
        "F.linear": _edit(_FFN_OK, _FFN, "F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)"),
        "torch.clamp(min=0)": _edit(_FFN_OK, _FFN, "linear(torch.clamp(linear(x, W1, b1), min=0), W2, b2)"),
        "matrix products with .T": _edit(_FFN_OK, _FFN, "torch.relu(x @ W1.T + b1) @ W2.T + b2"),
        "einsum": _edit(_FFN_OK, _FFN, "torch.einsum('...f,df->...d', torch.relu(torch.einsum('...d,fd->...f', x, W1)"
                                       " + b1), W2) + b2"),
        "in-place ReLU on the hidden layer": _edit(_FFN_OK, _FFN, "linear(linear(x, W1, b1).relu_(), W2, b2)"),
        "masked_fill": _edit(_FFN_OK, f"    return {_FFN}\n",
                             "    h = linear(x, W1, b1)\n"
                             "    return linear(h.masked_fill(h < 0, 0.0), W2, b2)\n"),
        "h[h < 0] = 0 on the hidden layer": _edit(_FFN_OK, f"    return {_FFN}\n",
                                                  "    h = linear(x, W1, b1)\n"
                                                  "    h[h < 0] = 0\n"
                                                  "    return linear(h, W2, b2)\n"),
        "torch.where": _edit(_FFN_OK, f"    return {_FFN}\n",
                             "    h = linear(x, W1, b1)\n"
                             "    return linear(torch.where(h > 0, h, 0.0), W2, b2)\n"),
        "torch.maximum with a 0-d zero": _edit(_FFN_OK, _FFN, "linear(torch.maximum(linear(x, W1, b1), "
                                                              "torch.tensor(0.0, dtype=x.dtype)), W2, b2)"),
    },
    "ex2-gelu": {
        "torch.special.ndtr for Phi": _edit(_GELU_OK, _GELU_ERF, "        return x * torch.special.ndtr(x)\n"),
        "erfc": _edit(_GELU_OK, _GELU_ERF, "        return 0.5 * x * torch.erfc(-x * math.sqrt(0.5))\n"),
        "checks the value first, a dict of functions": _GELU_HEAD + (
            "    modes = {'none': lambda t: t * 0.5 * (1 + torch.erf(t * 0.7071067811865476)),\n"
            "             'tanh': GELUTanh.apply}\n"
            "    if not isinstance(approximate, str) or approximate not in modes:\n"
            "        raise ValueError(f'approximate={approximate!r}: use none or tanh')\n"
            "    return modes[approximate](x)\n"),
        "match statement": _GELU_HEAD + (
            "    match approximate:\n"
            "        case 'none':\n"
            "            return x * (torch.erf(x / math.sqrt(2)) + 1) / 2\n"
            "        case 'tanh':\n"
            "            return GELUTanh.apply(x)\n"
            "        case _:\n"
            "            raise ValueError(f'unknown approximate {approximate}')\n"),
    },
    "ex3-layer-norm": {
        "two passes written out": _LN_OWN,
        "rsqrt": _edit(_LN_OWN, _LN_NORM, "    y = (h - mean) * torch.rsqrt(var + eps)\n"),
        "x.var(unbiased=False)": _edit(_LN_OWN, _LN_VAR, "    var = h.var(dim=-1, keepdim=True, unbiased=False)\n"),
        "upcast with .to(torch.float32), ones and zeros for None": _LN_HEAD + (
            "    h = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x\n"
            "    C = h.shape[-1]\n"
            "    w = torch.ones(C, dtype=h.dtype, device=h.device) if weight is None else weight\n"
            "    b = torch.zeros(C, dtype=h.dtype, device=h.device) if bias is None else bias\n"
            "    c = h - h.mean(-1, keepdim=True)\n"
            "    y = c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b\n"
            "    return y.type(x.dtype)\n"),
    },
    "ex4-mlp": {
        "F.gelu in forward": _edit(_MLP_OK, _MLP_FWD,
                                   "self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))"),
        "exercise 2's gelu in forward": _edit(_MLP_OK, _MLP_FWD,
                                              "self.dropout(self.c_proj(gelu(self.c_fc(x), approximate='tanh')))"),
        "F.dropout with self.training": _edit(_MLP_OK, _MLP_FWD,
                                              "F.dropout(self.c_proj(self.gelu(self.c_fc(x))), self.dropout.p, "
                                              "self.training)"),
        "F.linear with the modules' parameters": _edit(
            _MLP_OK, _MLP_FWD, "self.dropout(F.linear(self.gelu(F.linear(x, self.c_fc.weight, self.c_fc.bias)), "
                               "self.c_proj.weight, self.c_proj.bias))"),
        "one step per line": _edit(_MLP_OK, f"        return {_MLP_FWD}\n",
                                   "        h = self.c_fc(x)\n"
                                   "        h = self.gelu(h)\n"
                                   "        h = self.c_proj(h)\n"
                                   "        return self.dropout(h)\n"),
    },
    "ex5-block": {
        "exercise 3's layer_norm with the modules' parameters": _edit(
            _BLOCK_OK, _BLOCK_FWD,
            "        x = x + self.attn(layer_norm(x, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps))\n"
            "        x = x + self.mlp(layer_norm(x, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps))\n"),
        "F.layer_norm with the modules' parameters": _edit(
            _BLOCK_OK, _BLOCK_FWD,
            "        C = (x.shape[-1],)\n"
            "        x = x + self.attn(F.layer_norm(x, C, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps))\n"
            "        x = x + self.mlp(F.layer_norm(x, C, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps))\n"),
        "named intermediates": _edit(_BLOCK_OK, _BLOCK_FWD + "        return x\n",
                                     "        a = self.attn(self.ln_1(x))\n"
                                     "        h = x + a\n"
                                     "        m = self.mlp(self.ln_2(h))\n"
                                     "        return h + m\n"),
        "a loop over the two sublayers": _edit(
            _BLOCK_OK, _BLOCK_FWD,
            "        for ln, sub in ((self.ln_1, self.attn), (self.ln_2, self.mlp)):\n"
            "            x = x + sub(ln(x))\n"),
    },
    "ex6-post-ln": {
        "one torch.autograd.grad over all parameters, then split": _POST_OK + _NORMS_HEAD + _NORMS_FORWARD + (
            "    params = [list(block.parameters()) for block in blocks]\n"
            "    grads = torch.autograd.grad(loss, [p for ps in params for p in ps])\n"
            "    norms, i = [], 0\n"
            "    for ps in params:\n"
            "        norms.append(torch.sqrt(sum((g * g).sum() for g in grads[i:i + len(ps)])))\n"
            "        i += len(ps)\n"
            "    return torch.stack(norms)\n"),
        "the flattened gradients concatenated, .norm()": _norms(
            _NORM, "torch.cat([g.flatten() for g in grads]).norm()"),
        "the norm of the per-parameter norms": _norms(
            _NORM, "torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))"),
        "Post-LN with named intermediates": _post(_POST_FWD,
                                                  "        h = self.ln_1(x + self.attn(x))\n"
                                                  "        x = self.ln_2(h + self.mlp(h))\n"),
    },
    "ex7-param-count": {
        "12 d^2 + 13 d when d_ff is None": _COUNT_HEAD + (
            "    d = d_model\n"
            "    if d_ff is None:\n"
            "        return 12 * d * d + (13 * d if bias else 2 * d)\n"
            "    return 4 * d * d + 2 * d * d_ff + ((9 * d + d_ff) if bias else 2 * d)\n"),
        "written out without mha_param_count": _edit(_COUNT_OK, _COUNT_ATTN,
                                                     "4 * d_model * d_model + (4 * d_model if bias else 0)"),
        "bias as a number": _COUNT_HEAD + _COUNT_D_FF + (
            "    b = int(bool(bias))\n"
            "    return (2 * d_model * (1 + b) + 4 * d_model * (d_model + b)\n"
            "            + d_ff * (2 * d_model + b) + b * d_model)\n"),
    },
}

# Found by the reviews of the chapter (they passed an earlier version of the tests)
MUTANTS["ex1-ffn"]["review: float32 arithmetic for float64 inputs"] = _FFN_HEAD + (
    "    return linear(torch.relu(linear(x.float(), W1.float(), b1.float())), W2.float(),"
    " b2.float()).to(x.dtype)\n")
MUTANTS["ex2-gelu"]["review: erf computed in float32"] = _edit(
    _GELU_OK, _GELU_ERF, "        return 0.5 * x * (1.0 + torch.erf(x.float() / math.sqrt(2.0)))\n")
MUTANTS["ex5-block"]["review: LayerNorm eps 1e-6"] = _edit(
    _BLOCK_OK, _BLOCK_LN_1 + _BLOCK_ATTN + _BLOCK_LN_2,
    "        self.ln_1 = nn.LayerNorm(config.d_model, eps=1e-6, bias=config.bias)\n" + _BLOCK_ATTN
    + "        self.ln_2 = nn.LayerNorm(config.d_model, eps=1e-6, bias=config.bias)\n")
MUTANTS["ex5-block"]["review: attention without dropout"] = _edit(
    _BLOCK_OK, _BLOCK_ATTN,
    "        import dataclasses\n        self.attn = CausalSelfAttention(dataclasses.replace(config, dropout=0.0))\n")
MUTANTS["ex5-block"]["review: MLP without dropout"] = _edit(
    _BLOCK_OK, _BLOCK_MLP, "        import dataclasses\n        self.mlp = MLP(dataclasses.replace(config, dropout=0.0))\n")
MUTANTS["ex6-post-ln"]["review: zero_grad, backward, read .grad"] = _POST_OK + _NORMS_HEAD + (
    "    for block in blocks:\n"
    "        block.zero_grad()\n"
    "    y = x\n"
    "    for block in blocks:\n"
    "        y = block(y)\n"
    "    loss_fn(y).backward()\n"
    "    return torch.stack([torch.sqrt(sum((p.grad ** 2).sum() for p in block.parameters()))"
    " for block in blocks])\n")
MUTANTS["ex6-post-ln"]["review: the same, with .grad cleared before and after"] = _POST_OK + _NORMS_HEAD + (
    "    for block in blocks:\n"
    "        block.zero_grad(set_to_none=True)\n"
    "    y = x\n"
    "    for block in blocks:\n"
    "        y = block(y)\n"
    "    loss_fn(y).backward()\n"
    "    out = torch.stack([torch.sqrt(sum((p.grad ** 2).sum() for p in block.parameters()))"
    " for block in blocks])\n"
    "    for block in blocks:\n"
    "        block.zero_grad(set_to_none=True)\n"
    "    return out\n")
MUTANTS["ex7-param-count"]["review: counts the chapter's own modules on the meta device"] = _COUNT_HEAD + (
    "    cfg = BlockConfig(d_model=d_model, n_head=1, d_ff=d_ff, bias=bias)\n"
    "    with torch.device('meta'):\n"
    "        parts = [MLP(cfg), CausalSelfAttention(cfg)]\n"
    "    return 2 * (2 * d_model if bias else d_model) + sum(p.numel() for m in parts for p in m.parameters())\n")
CORRECT["ex3-layer-norm"]["review: torch.var_mean, biased"] = _LN_HEAD + (
    "    half = x.dtype in (torch.float16, torch.bfloat16)\n"
    "    h = x.float() if half else x\n"
    "    var, mean = torch.var_mean(h, dim=-1, keepdim=True, correction=0)\n"
    "    y = (h - mean) / torch.sqrt(var + eps)\n"
) + _LN_AFFINE + "    return y.to(x.dtype)\n"

# Found by the attacker's review
MUTANTS["ex2-gelu"]["attacker: torch._refs' gelu, imported in the call"] = _GELU_HEAD + (
    "    import torch._refs.nn.functional as R\n"
    "    if approximate not in ('none', 'tanh'):\n"
    "        raise ValueError(f'not {approximate!r}')\n"
    "    return R.gelu(x, approximate=approximate)\n")
MUTANTS["ex2-gelu"]["attacker: torch._refs' gelu, taken before the test"] = (
    "import torch._refs.nn.functional as _R\n_refs_gelu = _R.gelu\n" + _GELU_HEAD + (
        "    if approximate not in ('none', 'tanh'):\n"
        "        raise ValueError(f'not {approximate!r}')\n"
        "    return _refs_gelu(x, approximate=approximate)\n"))
MUTANTS["ex2-gelu"]["attacker: half precision returned unchanged"] = _GELU_HEAD + (
    "    if x.dtype in (torch.float16, torch.bfloat16):\n"
    "        return x\n") + _GELU_OK[len(_GELU_HEAD):]
MUTANTS["ex3-layer-norm"]["attacker: torch._refs' native_layer_norm in float64"] = _LN_HEAD + (
    "    import torch._refs as R\n"
    "    return R.native_layer_norm(x.double(), (x.shape[-1],), None if weight is None else weight.double(),\n"
    "                               None if bias is None else bias.double(), eps)[0].to(x.dtype)\n")
MUTANTS["ex3-layer-norm"]["attacker: a tiny eps replaced by 1e-5"] = _edit(
    _LN_OK, "    y = standardize(x.float() if half else x, eps)\n",
    "    y = standardize(x.float() if half else x, max(eps, 1e-5))\n")
MUTANTS["ex4-mlp"]["attacker: the hidden layer detached"] = _edit(
    _MLP_OK, _MLP_FWD, "self.dropout(self.c_proj(self.gelu(self.c_fc(x)).detach()))")
MUTANTS["ex5-block"]["attacker: both branches detached"] = _edit(
    _BLOCK_OK, _BLOCK_FWD,
    "        x = x + self.attn(self.ln_1(x)).detach()\n"
    "        x = x + self.mlp(self.ln_2(x)).detach()\n")
MUTANTS["ex6-post-ln"]["attacker: the forward run again for every block"] = _POST_OK + _NORMS_HEAD + (
    "    norms = []\n"
    "    for block in blocks:\n"
    "        y = x\n"
    "        for b in blocks:\n"
    "            y = b(y)\n"
    "        grads = torch.autograd.grad(loss_fn(y), list(block.parameters()))\n"
    f"        norms.append({_NORM})\n"
    "    return torch.stack(norms)\n")
MUTANTS["ex6-post-ln"]["attacker: the blocks put in eval mode"] = _POST_OK + _NORMS_HEAD + (
    "    for block in blocks:\n"
    "        block.eval()\n") + _NORMS_FORWARD + _NORMS_BACK
MUTANTS["ex7-param-count"]["attacker: PyTorch's modules put back during the call"] = (
    "_CLS = {'Linear': nn.Linear, 'LayerNorm': nn.LayerNorm}\n"
    "_INIT = {k: c.__init__ for k, c in _CLS.items()}\n" + _COUNT_HEAD + (
        "    import torch.nn as _nn\n"
        "    now = {k: (getattr(_nn, k), c.__dict__['__init__']) for k, c in _CLS.items()}\n"
        "    for k, c in _CLS.items():\n"
        "        setattr(_nn, k, c); c.__init__ = _INIT[k]\n"
        "    try:\n"
        "        with torch.device('meta'):\n"
        "            b = Block(BlockConfig(d_model=d_model, n_head=1, d_ff=d_ff, bias=bias))\n"
        "    finally:\n"
        "        for k, (name, init) in now.items():\n"
        "            setattr(_nn, k, name); _CLS[k].__init__ = init\n"
        "    return sum(p.numel() for p in b.parameters())\n"))
MUTANTS["ex7-param-count"]["attacker: four kernel-size-1 convolutions counted"] = _COUNT_HEAD + (
    "    d_ff = d_ff or 4 * d_model\n"
    "    with torch.device('meta'):\n"
    "        mods = [nn.Conv1d(d_model, 3 * d_model, 1, bias=bias), nn.Conv1d(d_model, d_model, 1, bias=bias),\n"
    "                nn.Conv1d(d_model, d_ff, 1, bias=bias), nn.Conv1d(d_ff, d_model, 1, bias=bias)]\n"
    "    return sum(p.numel() for m in mods for p in m.parameters()) + 2 * (2 * d_model if bias else d_model)\n")

# Found by the second attacker's review (after the first fixes)
MUTANTS["ex2-gelu"]["attacker: the innermost function of torch._decomp's gelu"] = _GELU_HEAD + (
    "    if approximate not in ('none', 'tanh'):\n"
    "        raise ValueError(f'bad {approximate!r}')\n"
    "    import torch._decomp\n"
    "    f = torch._decomp.decomposition_table[torch.ops.aten.gelu.default]\n"
    "    while hasattr(f, '__wrapped__'):\n"
    "        f = f.__wrapped__\n"
    "    return f(x, approximate=approximate)\n")
MUTANTS["ex2-gelu"]["attacker: torch._refs' gelu unwrapped before the test"] = (
    "import torch._refs.nn.functional as _R\n_inner_gelu = _R.gelu.__wrapped__\n" + _GELU_HEAD + (
        "    if approximate not in ('none', 'tanh'):\n"
        "        raise ValueError(f'not {approximate!r}')\n"
        "    return _inner_gelu(x, approximate=approximate)\n"))
MUTANTS["ex7-param-count"]["attacker: modules built on frombuffer, their __init__ taken before the test"] = (
    "_L, _LN = nn.Linear, nn.LayerNorm\n"
    "_inits = (nn.Linear.__init__, nn.LayerNorm.__init__)\n"
    "_one = torch.frombuffer(bytearray(4), dtype=torch.float32)\n"
    "def _empty(*s, **k):\n"
    "    shape = tuple(s[0]) if len(s) == 1 and isinstance(s[0], (tuple, list, torch.Size)) else s\n"
    "    return _one.expand(shape)\n" + _COUNT_HEAD + (
        "    d_ff = 4 * d_model if d_ff is None else d_ff\n"
        "    saved = torch.empty, _L.reset_parameters, _LN.reset_parameters\n"
        "    _L.__init__, _LN.__init__ = _inits\n"
        "    torch.empty = _empty\n"
        "    _L.reset_parameters = _LN.reset_parameters = lambda self: None\n"
        "    try:\n"
        "        mods = [_LN(d_model, bias=bias), _LN(d_model, bias=bias),\n"
        "                _L(d_model, 3 * d_model, bias=bias), _L(d_model, d_model, bias=bias),\n"
        "                _L(d_model, d_ff, bias=bias), _L(d_ff, d_model, bias=bias)]\n"
        "    finally:\n"
        "        torch.empty, _L.reset_parameters, _LN.reset_parameters = saved\n"
        "    return sum(p.numel() for m in mods for p in m.parameters())\n"))
