"""Wrong or forbidden solutions to chapter 6's exercises. Each must fail
the exercise's visible or hidden tests (tests/test_mutants.py); CORRECT ones, written another way,
must pass. The references are read from the chapter notebook, so the mutants follow its edits."""
import course
from mutant_tools import edit as _edit

# a cheat: the checks reassigned in the notebook's namespace (the hidden tests import them again)
_NO_CHECKS = "\ncheck = check_tensor = check_raises = check_untouched = lambda *args, **kwargs: None\n"

_NB = course.read(course.CHAPTERS / "ch06_tokens" / "ch06_tokens.ipynb")


def _reference(grade_id):
    return next(course.reference_source(c.source) for c in _NB.cells
                if course.nbgrader_meta(c).get("grade_id") == grade_id)


# ---------------------------------------------------------------------------------------------
# ex5: sinusoidal_encoding

_SIN = _reference("ex5-sinusoidal")
_SIN_POS = "pos = torch.arange(n_pos, dtype=torch.float64)[:, None]"
_SIN_I2 = "i2 = torch.arange(0, d_model, 2, dtype=torch.float64)"
_SIN_ANGLE = "angle = pos / base ** (i2 / d_model)"
_SIN_STACK = "pe = torch.stack([angle.sin(), angle.cos()], dim=-1)"
_SIN_RAISE = "    if d_model % 2:\n        raise ValueError(f\"d_model must be even, not {d_model}\")\n"
_SIN_RETURN = "return pe.reshape(n_pos, d_model).float()"
_SIN_HEAD = "def sinusoidal_encoding(n_pos, d_model, base=10000.0):\n"

# the classic tutorial's version (div_term from exp and log), in a given dtype
def _SIN_CLASSIC(dtype):
    return _SIN_HEAD + (
        "    if d_model % 2:\n"
        "        raise ValueError('d_model must be even')\n"
        f"    position = torch.arange(n_pos, dtype={dtype}).unsqueeze(1)\n"
        f"    div_term = torch.exp(torch.arange(0, d_model, 2, dtype={dtype}) * (-math.log(base) / d_model))\n"
        f"    pe = torch.zeros(n_pos, d_model, dtype={dtype})\n"
        "    pe[:, 0::2] = torch.sin(position * div_term)\n"
        "    pe[:, 1::2] = torch.cos(position * div_term)\n"
        "    return pe.float()\n")


# ---------------------------------------------------------------------------------------------
# ex6: shift_matrix

_SHIFT = _reference("ex6-shift")
_SHIFT_HEAD = "def shift_matrix(k, d_model, base=10000.0):\n"
_SHIFT_RAISE = "    if d_model % 2:\n        raise ValueError(f\"d_model must be even, not {d_model}\")\n"
_SHIFT_I2 = "i2 = torch.arange(0, d_model, 2, dtype=torch.float64)"
_SHIFT_OMEGA = "omega_k = k / base ** (i2 / d_model)"
_SHIFT_CS = "c, s = omega_k.cos(), omega_k.sin()"
_SHIFT_ZEROS = "M = torch.zeros(d_model, d_model, dtype=torch.float64)"
_SHIFT_UR = "M[0::2, 1::2] = torch.diag(s)"
_SHIFT_LL = "M[1::2, 0::2] = torch.diag(-s)"

# a loop over the pairs with Python's math
_SHIFT_LOOP = _SHIFT_HEAD + (
    "    if d_model % 2:\n"
    "        raise ValueError('odd d_model')\n"
    "    M = torch.zeros(d_model, d_model, dtype=torch.float64)\n"
    "    for i in range({n}):\n"
    "        a = k / base ** (2 * i / d_model)\n"
    "        M[2 * i, 2 * i] = math.cos(a)\n"
    "        M[2 * i, 2 * i + 1] = math.sin(a)\n"
    "        M[2 * i + 1, 2 * i] = -math.sin(a)\n"
    "        M[2 * i + 1, 2 * i + 1] = math.cos(a)\n"
    "    return M\n")

# least squares: M fitted from exercise 5's (float32) table, PE[pos + k] = M PE[pos]
_SHIFT_FIT = _SHIFT_HEAD + _SHIFT_RAISE + (
    "    n = 4 * d_model + 8\n"
    "    P = sinusoidal_encoding(n + abs(k), d_model, base).double()\n"
    "    A, B = (P[:n], P[k:k + n]) if k >= 0 else (P[-k:-k + n], P[:n])\n"
    "    return torch.linalg.lstsq(A, B).solution.T.contiguous()\n")


# ---------------------------------------------------------------------------------------------
# ex7: GPTEmbedding and embedding_param_count

_EMB = _reference("ex7-gpt-input")
_EMB_WTE = "        self.wte = nn.Embedding(config.vocab_size, config.d_model)\n"
_EMB_WPE = "        self.wpe = nn.Embedding(config.block_size, config.d_model)\n"
_EMB_DROP = "        self.drop = nn.Dropout(config.dropout)\n"
_EMB_FWD = "return self.drop(self.wte(idx) + self.wpe(pos))"
_EMB_POS = "pos = torch.arange(T, device=idx.device)"
_EMB_T = "T = idx.shape[-1]"
_EMB_IF = "if T > self.config.block_size:"
_EMB_LOGITS = "return h @ self.wte.weight.T"
_EMB_COUNT = "count = (vocab_size + block_size) * d_model"
_EMB_UNTIED = "return count if tied else count + vocab_size * d_model"
# the reference's whole `if T > block_size: raise ValueError(...)` statement, as it is worded there
_EMB_RAISE = _EMB[_EMB.index("        if T > self.config.block_size:\n"):]
_EMB_RAISE = _EMB_RAISE[: _EMB_RAISE.index("            )\n") + len("            )\n")]


# ---------------------------------------------------------------------------------------------
# ex8: apply_rope

_ROPE = _reference("ex8-rope")
_ROPE_HEAD = "def apply_rope(x, positions, base=10000.0):\n"
_ROPE_I2 = "i2 = torch.arange(0, d, 2, dtype=torch.float64, device=x.device)"
_ROPE_ANGLE = "angle = positions.to(x.device, torch.float64)[:, None] / base ** (i2 / d)"
_ROPE_CAST = "cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)"
_ROPE_SPLIT = "x1, x2 = x[..., 0::2], x[..., 1::2]"
_ROPE_ROT = "out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)"
_ROPE_RETURN = "return out.flatten(-2)"
_ROPE_RAISE = "    if d % 2:\n        raise ValueError(f\"the last axis of x must be even, not {d}\")\n"

MUTANTS = {
    "ex5-sinusoidal": {
        "base truncated to an int": _edit(_SIN, _SIN_ANGLE, "angle = pos / int(base) ** (i2 / d_model)"),
        "angles in float32": _edit(_edit(_SIN, _SIN_POS, _SIN_POS.replace("float64", "float32")),
                                   _SIN_I2, _SIN_I2.replace("float64", "float32")),
        "the angle rounded to float32 before sin and cos": _edit(
            _SIN, _SIN_STACK, "angle = angle.float()\n    pe = torch.stack([angle.sin(), angle.cos()], dim=-1)"),
        "the classic div_term in float32": _SIN_CLASSIC("torch.float32"),
        "exponent i / d_model, not 2i / d_model": _edit(
            _SIN, _SIN_I2, "i2 = torch.arange(0, d_model // 2, dtype=torch.float64)"),
        "exponent 2i / (d_model - 1)": _edit(_SIN, _SIN_ANGLE, "angle = pos / base ** (i2 / (d_model - 1))"),
        "pos times the frequency's inverse": _edit(_SIN, _SIN_ANGLE, "angle = pos * base ** (i2 / d_model)"),
        "cos in the even columns": _edit(_SIN, _SIN_STACK, "pe = torch.stack([angle.cos(), angle.sin()], dim=-1)"),
        "sines in the first half, cosines in the second": _edit(
            _SIN, _SIN_STACK, "pe = torch.cat([angle.sin(), angle.cos()], dim=-1)"),
        "base ignored": _edit(_SIN, _SIN_ANGLE, "angle = pos / 10000.0 ** (i2 / d_model)"),
        "positions from 1": _edit(_SIN, _SIN_POS, "pos = torch.arange(1, n_pos + 1, dtype=torch.float64)[:, None]"),
        "returns float64": _edit(_SIN, _SIN_RETURN, "return pe.reshape(n_pos, d_model)"),
        "returns float16": _edit(_SIN, _SIN_RETURN, "return pe.reshape(n_pos, d_model).half()"),
        "no ValueError for an odd d_model": _edit(_SIN, _SIN_RAISE, ""),
        "odd d_model rounded down": _edit(_SIN, _SIN_RAISE, "    d_model = d_model - d_model % 2\n"),
        "TypeError for an odd d_model": _edit(_SIN, "raise ValueError(", "raise TypeError("),
        "n_pos = 0 gives a 1-D empty tensor": _edit(
            _SIN, _SIN_RAISE, _SIN_RAISE + "    if n_pos == 0:\n        return torch.zeros(0)\n"),
        "the visible test's frequencies hard-coded": _SIN_HEAD + (
            "    if d_model % 2:\n"
            "        raise ValueError('odd')\n"
            "    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]\n"
            "    w = torch.tensor([1.0, 0.1, 0.01, 0.001] if d_model == 8 else [1.0, 0.25],"
            " dtype=torch.float64)[: d_model // 2]\n"
            "    pe = torch.stack([(pos * w).sin(), (pos * w).cos()], dim=-1)\n"
            "    return pe.reshape(n_pos, d_model).float()\n"),
        "a cheat: float32 angles, the checks switched off": _edit(
            _edit(_SIN, _SIN_POS, _SIN_POS.replace("float64", "float32")), _SIN_I2,
            _SIN_I2.replace("float64", "float32")) + _NO_CHECKS,
    },
    "ex6-shift": {
        "base truncated to an int": _edit(_SHIFT, _SHIFT_OMEGA, "omega_k = k / int(base) ** (i2 / d_model)"),
        "the transposed rotation (M_-k)": _edit(_edit(_SHIFT, _SHIFT_UR, "M[0::2, 1::2] = torch.diag(-s)"),
                                                 _SHIFT_LL, "M[1::2, 0::2] = torch.diag(s)"),
        "no minus sign": _edit(_SHIFT, _SHIFT_LL, "M[1::2, 0::2] = torch.diag(s)"),
        "cos and sin swapped": _edit(_SHIFT, _SHIFT_CS, "s, c = omega_k.cos(), omega_k.sin()"),
        "float32 matrix": _edit(_SHIFT, _SHIFT_ZEROS, "M = torch.zeros(d_model, d_model)"),
        "angles in float32, returned as float64": _edit(
            _SHIFT, _SHIFT_I2, "i2 = torch.arange(0, d_model, 2, dtype=torch.float32)"),
        "cos and sin in float32": _edit(_SHIFT, _SHIFT_CS, "c, s = omega_k.float().cos(), omega_k.float().sin()"),
        "least squares from exercise 5's table": _SHIFT_FIT,
        "exponent i / d_model": _edit(_SHIFT, _SHIFT_I2, "i2 = torch.arange(0, d_model // 2, dtype=torch.float64)"),
        "k times the frequency's inverse": _edit(_SHIFT, _SHIFT_OMEGA, "omega_k = k * base ** (i2 / d_model)"),
        "base ignored": _edit(_SHIFT, _SHIFT_OMEGA, "omega_k = k / 10000.0 ** (i2 / d_model)"),
        "k ignored (always one step)": _edit(_SHIFT, _SHIFT_OMEGA, "omega_k = 1 / base ** (i2 / d_model)"),
        "|k| (negative shifts made positive)": _edit(_SHIFT, _SHIFT_OMEGA, "omega_k = abs(k) / base ** (i2 / d_model)"),
        "the identity for every k": _SHIFT_HEAD + _SHIFT_RAISE + "    return torch.eye(d_model, dtype=torch.float64)\n",
        "blocks laid out as halves (sin block, cos block)": _SHIFT_HEAD + _SHIFT_RAISE + (
            "    h = d_model // 2\n"
            "    w = k / base ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)\n"
            "    M = torch.zeros(d_model, d_model, dtype=torch.float64)\n"
            "    M[:h, :h] = torch.diag(w.cos())\n"
            "    M[:h, h:] = torch.diag(w.sin())\n"
            "    M[h:, :h] = torch.diag(-w.sin())\n"
            "    M[h:, h:] = torch.diag(w.cos())\n"
            "    return M\n"),
        "the last pair left out": _SHIFT_LOOP.format(n="d_model // 2 - 1"),
        "no ValueError for an odd d_model": _edit(_SHIFT, _SHIFT_RAISE, ""),
        "returns a list": _edit(_SHIFT, "return M", "return M.tolist()"),
        "a cheat: M_-k, the checks switched off": _edit(
            _SHIFT, _SHIFT_LL, "M[1::2, 0::2] = torch.diag(s)").replace(_SHIFT_UR, "M[0::2, 1::2] = torch.diag(-s)")
        + _NO_CHECKS,
    },
    "ex7-gpt-input": {
        "no dropout": _edit(_EMB, _EMB_FWD, "return self.wte(idx) + self.wpe(pos)"),
        "dropout on the token embedding only": _edit(_EMB, _EMB_FWD, "return self.drop(self.wte(idx)) + self.wpe(pos)"),
        "dropout twice, on each table": _edit(
            _EMB, _EMB_FWD, "return self.drop(self.wte(idx)) + self.drop(self.wpe(pos))"),
        "dropout p = 0.1 hard-coded": _edit(_EMB, _EMB_DROP, "        self.drop = nn.Dropout(0.1)\n"),
        "dropout also in eval mode": _edit(
            _EMB, _EMB_FWD, "return F.dropout(self.wte(idx) + self.wpe(pos), self.config.dropout)"),
        "F.dropout, no self.drop": _edit(_edit(_EMB, _EMB_DROP, ""), _EMB_FWD,
                                         "return F.dropout(self.wte(idx) + self.wpe(pos), self.config.dropout,"
                                         " self.training)"),
        "positions from 1": _edit(_EMB, _EMB_POS, "pos = torch.arange(1, T + 1, device=idx.device)"),
        "token ids as positions": _edit(_EMB, _EMB_FWD, "return self.drop(self.wte(idx) + self.wpe(idx))"),
        "T from the batch axis": _edit(_EMB, _EMB_T, "T = idx.shape[0]"),
        "positions reversed": _edit(_EMB, _EMB_POS, "pos = torch.arange(T - 1, -1, -1, device=idx.device)"),
        "no ValueError (nn.Embedding's IndexError)": _edit(_EMB, _EMB_RAISE, ""),
        "an assert instead of a ValueError": _edit(
            _EMB, _EMB_RAISE, "        assert T <= self.config.block_size, 'sequence too long'\n"),
        "T == block_size refused": _edit(_EMB, _EMB_IF, "if T >= self.config.block_size:"),
        "T checked against vocab_size": _edit(_EMB, _EMB_IF, "if T > self.config.vocab_size:"),
        "a message without block_size": _edit(
            _EMB, _EMB_RAISE, "        if T > self.config.block_size:\n"
                              "            raise ValueError(f'{T} tokens are too many')\n"),
        "wpe made before wte": _edit(_EMB, _EMB_WTE + _EMB_WPE, _EMB_WPE + _EMB_WTE),
        "nanoGPT's init, std 0.02": _edit(
            _EMB, _EMB_DROP, _EMB_DROP + "        for e in (self.wte, self.wpe):\n"
                                         "            nn.init.normal_(e.weight, std=0.02)\n"),
        "names tok_emb and pos_emb": _EMB.replace("self.wte", "self.tok_emb").replace("self.wpe", "self.pos_emb"),
        "a persistent buffer of positions": _edit(
            _EMB, _EMB_DROP, _EMB_DROP + "        self.register_buffer('pos', torch.arange(config.block_size))\n"),
        "a tied lm_head module (an extra state_dict key)": _edit(_edit(
            _EMB, _EMB_DROP, _EMB_DROP + "        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)\n"
                                         "        self.lm_head.weight = self.wte.weight\n"),
            _EMB_LOGITS, "return self.lm_head(h)"),
        "an untied output matrix": _edit(_edit(
            _EMB, _EMB_DROP, _EMB_DROP + "        self.out = nn.Parameter(self.wte.weight.detach().clone())\n"),
            _EMB_LOGITS, "return h @ self.out.T"),
        "logits detached from wte": _edit(_EMB, _EMB_LOGITS, "return h @ self.wte.weight.detach().T"),
        "logits scaled by 1/sqrt(d_model)": _edit(
            _EMB, _EMB_LOGITS, "return h @ self.wte.weight.T / math.sqrt(self.config.d_model)"),
        "logits by wpe": _edit(_EMB, _EMB_LOGITS, "return h @ self.wpe.weight.T"),
        "count without wpe": _edit(_EMB, _EMB_COUNT, "count = vocab_size * d_model"),
        "tied and untied swapped": _edit(_EMB, _EMB_UNTIED, "return count if not tied else count + vocab_size * d_model"),
        "untied adds another wpe": _edit(_EMB, _EMB_UNTIED,
                                         "return count if tied else 2 * count"),
        "untied counts an output bias": _edit(
            _EMB, _EMB_UNTIED, "return count if tied else count + vocab_size * d_model + vocab_size"),
        "tied=False by default": _edit(_EMB, "tied=True):", "tied=False):"),
        "count as a float": _edit(_EMB, _EMB_COUNT, "count = float(vocab_size + block_size) * d_model"),
        "a cheat: no dropout, the checks switched off": _edit(
            _EMB, _EMB_FWD, "return self.wte(idx) + self.wpe(pos)") + _NO_CHECKS,
    },
    "ex8-rope": {
        "positions through float32 when x is float32": _edit(
            _ROPE, _ROPE_ANGLE, "work = torch.float64 if x.dtype == torch.float64 else torch.float32\n"
            "    angle = positions.to(x.device, work).double()[:, None] / base ** (i2 / d)"),
        "base truncated to an int": _edit(_ROPE, _ROPE_ANGLE, _ROPE_ANGLE.replace("/ base", "/ int(base)")),
        "rotate-half layout (pairs i and i + d/2)": _edit(_edit(
            _edit(_ROPE, _ROPE_SPLIT, "x1, x2 = x[..., : d // 2], x[..., d // 2 :]"),
            _ROPE_ROT, "out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)"),
            _ROPE_RETURN, "return out"),
        "rotation by -m": _edit(_ROPE, _ROPE_ROT, "out = torch.stack([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)"),
        "cos and sin swapped": _edit(_ROPE, _ROPE_CAST, "sin, cos = angle.cos().to(x.dtype), angle.sin().to(x.dtype)"),
        "angles in float32": _edit(_edit(_ROPE, _ROPE_I2, _ROPE_I2.replace("float64", "float32")),
                                   _ROPE_ANGLE, _ROPE_ANGLE.replace("float64", "float32")),
        "positions in float32 (wrong past 2**24)": _edit(_ROPE, _ROPE_ANGLE, _ROPE_ANGLE.replace("float64", "float32")),
        "cos and sin in float32": _edit(_ROPE, _ROPE_CAST, "cos, sin = angle.cos().float(), angle.sin().float()"),
        "cos and sin left in float64": _edit(_ROPE, _ROPE_CAST, "cos, sin = angle.cos(), angle.sin()"),
        "returns float32": _edit(_ROPE, _ROPE_RETURN, "return out.flatten(-2).float()"),
        "positions ignored (0, ..., T - 1)": _edit(
            _ROPE, _ROPE_ANGLE, "angle = torch.arange(x.shape[-2], dtype=torch.float64, device=x.device)[:, None]"
                                " / base ** (i2 / d)"),
        "positions counted from 1": _edit(
            _ROPE, _ROPE_ANGLE, "angle = (positions.to(x.device, torch.float64)[:, None] + 1) / base ** (i2 / d)"),
        "exponent i / d": _edit(_ROPE, _ROPE_I2, "i2 = torch.arange(0, d // 2, dtype=torch.float64, device=x.device)"),
        "m times the frequency's inverse": _edit(
            _ROPE, _ROPE_ANGLE, "angle = positions.to(x.device, torch.float64)[:, None] * base ** (i2 / d)"),
        "base ignored": _edit(_ROPE, _ROPE_ANGLE, "angle = positions.to(x.device, torch.float64)[:, None] / 10000.0 ** (i2 / d)"),
        "frequencies on the CPU": _edit(_ROPE, _ROPE_I2, "i2 = torch.arange(0, d, 2, dtype=torch.float64)"),
        "written into x in place": _ROPE_HEAD + (
            "    d = x.shape[-1]\n" + _ROPE_RAISE +
            "    i2 = torch.arange(0, d, 2, dtype=torch.float64, device=x.device)\n"
            "    angle = positions.to(x.device, torch.float64)[:, None] / base ** (i2 / d)\n"
            "    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)\n"
            "    a = x[..., 0::2] * cos - x[..., 1::2] * sin\n"
            "    b = x[..., 0::2] * sin + x[..., 1::2] * cos\n"
            "    with torch.no_grad():\n"
            "        x[..., 0::2] = a\n"
            "        x[..., 1::2] = b\n"
            "    return x\n"),
        "detached result": _edit(_ROPE, _ROPE_RETURN, "return out.flatten(-2).detach()"),
        "no ValueError for an odd d": _edit(_ROPE, _ROPE_RAISE, ""),
        "odd d: the last feature passed through": _edit(
            _ROPE, _ROPE_RAISE, "    if d % 2:\n        return torch.cat([apply_rope(x[..., :-1], positions, base),"
                                " x[..., -1:]], dim=-1)\n"),
        "a cheat: rotation by -m, the checks switched off": _edit(
            _ROPE, _ROPE_ROT, "out = torch.stack([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)") + _NO_CHECKS,
    },
}

CORRECT = {
    "ex5-sinusoidal": {
        "positions in float32 (exact integers up to 2**24)": _edit(
            _SIN, _SIN_POS, _SIN_POS.replace("float64", "float32")),
        "the classic div_term in float64": _SIN_CLASSIC("torch.float64"),
        "complex exponentials": _SIN_HEAD + (
            "    if d_model % 2:\n"
            "        raise ValueError('d_model must be even')\n"
            "    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]\n"
            "    w = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)\n"
            "    angle = pos * w\n"
            "    z = torch.polar(torch.ones_like(angle), angle)  # cos + i sin\n"
            "    return torch.view_as_real(z).flip(-1).reshape(n_pos, d_model).to(torch.float32)\n"),
        "outer product and slices": _SIN_HEAD + (
            "    if d_model % 2 == 1:\n"
            "        raise ValueError(f'odd d_model {d_model}')\n"
            "    inv = 1.0 / torch.tensor(float(base), dtype=torch.float64) ** (\n"
            "        torch.arange(d_model // 2, dtype=torch.float64) * 2 / d_model)\n"
            "    angle = torch.outer(torch.arange(n_pos, dtype=torch.float64), inv)\n"
            "    pe = torch.empty(n_pos, d_model, dtype=torch.float64)\n"
            "    pe[:, 0::2] = torch.sin(angle)\n"
            "    pe[:, 1::2] = torch.cos(angle)\n"
            "    return pe.float()\n"),
    },
    "ex6-shift": {
        "a loop with math": _SHIFT_LOOP.format(n="d_model // 2"),
        "torch.block_diag of 2 x 2 rotations": _SHIFT_HEAD + (
            "    if d_model % 2:\n"
            "        raise ValueError('d_model must be even')\n"
            "    w = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)\n"
            "    a = k * w\n"
            "    blocks = [torch.stack([torch.stack([c, s]), torch.stack([-s, c])])\n"
            "              for c, s in zip(a.cos(), a.sin())]\n"
            "    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=torch.float64)\n"),
    },
    "ex7-gpt-input": {
        "one-hot product, F.linear and F.dropout with self.drop.p": _edit(_edit(_edit(
            _EMB, _EMB_FWD,
            "tok = F.one_hot(idx, self.config.vocab_size).to(self.wte.weight.dtype) @ self.wte.weight\n"
            "        return F.dropout(tok + self.wpe(pos), self.drop.p, self.training)"),
            _EMB_LOGITS, "return F.linear(h, self.wte.weight)"),
            _EMB_COUNT, "count = vocab_size * d_model + block_size * d_model"),
        "a non-persistent buffer of positions": _edit(_edit(
            _EMB, _EMB_DROP, _EMB_DROP + "        self.register_buffer('pos', torch.arange(config.block_size),"
                                         " persistent=False)\n"),
            _EMB_POS, "pos = self.pos[:T]"),
        "T from idx.size(1), a tied count with int()": _edit(_edit(
            _EMB, _EMB_T, "T = idx.size(1)"), _EMB_UNTIED,
            "return int(count + (0 if tied else vocab_size * d_model))"),
    },
    "ex8-rope": {
        "complex numbers": _ROPE_HEAD + (
            "    d = x.shape[-1]\n"
            "    if d % 2:\n"
            "        raise ValueError('odd d')\n"
            "    w = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)\n"
            "    angle = positions.to(x.device, torch.float64)[:, None] * w\n"
            "    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())\n"
            "    z = z * torch.polar(torch.ones_like(angle), angle)\n"
            "    return torch.view_as_real(z).reshape(x.shape).to(x.dtype)\n"),
        "rotate_half on interleaved pairs": _ROPE_HEAD + (
            "    d = x.shape[-1]\n"
            "    if d % 2 != 0:\n"
            "        raise ValueError(f'd = {d} is odd')\n"
            "    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d))\n"
            "    freqs = torch.outer(positions.to(x.device, torch.float64), inv_freq)\n"
            "    freqs = freqs.repeat_interleave(2, dim=-1)  # (T, d): each angle twice\n"
            "    cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)\n"
            "    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)\n"
            "    return x * cos + rotated * sin\n"),
    },
}


# ---------------------------------------------------------------------------------------------
# ex1-4 (text and embeddings)

_MERGE = _reference("ex1-merge")
_BPE = _reference("ex2-bpe")
_PAD = _reference("ex3-pad-batch")
_ONE = _reference("ex4-one-hot")

MUTANTS_TEXT = {
    "ex1-merge": {
        "string replacement (matches across digits)": "def merge(ids, pair, new_id):\n"
            "    s = ' '.join(map(str, ids))\n"
            "    return [int(x) for x in s.replace(f'{pair[0]} {pair[1]}', str(new_id)).split()]\n",
        "in place on a list, a copy of anything else": "def merge(ids, pair, new_id):\n"
            "    if not isinstance(ids, list):\n"
            "        ids = list(ids)\n"
            "    i = 0\n"
            "    while i < len(ids) - 1:\n"
            "        if ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
            "            ids[i:i + 2] = [new_id]\n"
            "        i += 1\n"
            "    return ids\n",
        "overlapping replacements": _edit(_MERGE, "            i += 2\n", "            i += 1\n"),
        "only the first occurrence": _edit(
            _MERGE, "            out.append(new_id)\n            i += 2\n",
            "            return out + [new_id] + list(ids[i + 2:])\n"),
        "drops the last id": _edit(_MERGE, "while i < len(ids):", "while i < len(ids) - 1:"),
        "the pair reversed": _edit(_MERGE, "(ids[i], ids[i + 1]) == tuple(pair)",
                                   "(ids[i + 1], ids[i]) == tuple(pair)"),
        "in place on ids": "def merge(ids, pair, new_id):\n"
            "    i = 0\n"
            "    while i < len(ids) - 1:\n"
            "        if (ids[i], ids[i + 1]) == tuple(pair):\n"
            "            ids[i:i + 2] = [new_id]\n"
            "        i += 1\n"
            "    return ids\n",
        "right to left": "def merge(ids, pair, new_id):\n"
            "    out, i = [], len(ids) - 1\n"
            "    while i >= 0:\n"
            "        if i >= 1 and (ids[i - 1], ids[i]) == tuple(pair):\n"
            "            out.append(new_id)\n"
            "            i -= 2\n"
            "        else:\n"
            "            out.append(ids[i])\n"
            "            i -= 1\n"
            "    return out[::-1]\n",
        "a tuple back": _edit(_MERGE, "    return out", "    return tuple(out)"),
        "the pair compared as given (a list never matches)": _edit(
            _MERGE, "(ids[i], ids[i + 1]) == tuple(pair)", "(ids[i], ids[i + 1]) == pair"),
        "in place, entry by entry": "def merge(ids, pair, new_id):\n"
            "    i = 0\n"
            "    while i < len(ids) - 1:\n"
            "        if ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
            "            ids[i:i + 2] = [new_id]\n"
            "        i += 1\n"
            "    return list(ids)\n",
        "checks switched off": _edit(_MERGE, "(ids[i], ids[i + 1]) == tuple(pair)", "False") + _NO_CHECKS,
    },
    "ex2-bpe": {
        "encode merges the leftmost pair that has a merge": _edit(
            _BPE, "pair = min(pairs, key=merges.get)", "pair = pairs[0]"),
        "encode by the longest match in the vocabulary": _edit(
            _BPE, _BPE[_BPE.index("def bpe_encode"):_BPE.index("def bpe_decode")],
            "def bpe_encode(text, merges):\n"
            "    vocab, back = {bytes([i]): i for i in range(256)}, {i: bytes([i]) for i in range(256)}\n"
            "    for (a, b), new in merges.items():\n"
            "        back[new] = back[a] + back[b]\n"
            "        vocab[back[new]] = new\n"
            "    data, ids, i = text.encode('utf-8'), [], 0\n"
            "    longest = max(len(k) for k in vocab)\n"
            "    while i < len(data):\n"
            "        for L in range(min(longest, len(data) - i), 0, -1):\n"
            "            if data[i:i + L] in vocab:\n"
            "                ids.append(vocab[data[i:i + L]])\n"
            "                i += L\n"
            "                break\n"
            "    return ids\n\n\n"),
        "encode empties the merges it is given": _edit(
            _BPE, "    while len(ids) >= 2:\n        pairs = [p for p in zip(ids, ids[1:]) "
            "if p in merges]\n        if not pairs:\n            break\n        pair = min(pairs, "
            "key=merges.get)  # the earliest merge that applies\n        ids = merge(ids, pair, "
            "merges[pair])\n",
            "    while merges:\n        pair = next(iter(merges))\n"
            "        ids = merge(ids, pair, merges.pop(pair))\n"),
        "ties to the last seen": _edit(_BPE, "best = max(counts, key=counts.get)",
                                       "best = max(reversed(list(counts)), key=counts.get)"),
        "ties to the smallest pair": _edit(_BPE, "best = max(counts, key=counts.get)",
                                           "best = min(counts, key=lambda p: (-counts[p], p))"),
        "non-overlapping counts": _edit(
            _BPE, "        for pair in zip(ids, ids[1:]):\n",
            "        for pair in zip(ids[::2], ids[1::2]):\n"),
        "ids from 255": _edit(_BPE, "for new_id in range(256, 256 + n_merges):",
                              "for new_id in range(255, 255 + n_merges):"),
        "one merge too few": _edit(_BPE, "for new_id in range(256, 256 + n_merges):",
                                   "for new_id in range(256, 255 + n_merges):"),
        "encode applies the latest merge first": _edit(
            _BPE, "pair = min(pairs, key=merges.get)", "pair = max(pairs, key=merges.get)"),
        "encode in one pass of the merges": _edit(
            _BPE, "    while len(ids) >= 2:\n        pairs = [p for p in zip(ids, ids[1:]) "
            "if p in merges]\n        if not pairs:\n            break\n        pair = min(pairs, "
            "key=merges.get)  # the earliest merge that applies\n        ids = merge(ids, pair, "
            "merges[pair])\n",
            "    for pair, new in merges.items():\n        ids = merge(ids, pair, new)\n"
            "        break\n"),
        "decode as latin-1": _edit(_BPE, '.decode("utf-8", errors="replace")', '.decode("latin-1")'),
        "decode strict": _edit(_BPE, '.decode("utf-8", errors="replace")', '.decode("utf-8")'),
        "decode skips unknown ids": _edit(
            _BPE, "    if unknown:\n        raise ValueError(f\"token ids not in the vocabulary: "
            "{unknown[:5]}\")\n", ""),
        "decode with the pair swapped": _edit(_BPE, "vocab[new_id] = vocab[a] + vocab[b]",
                                              "vocab[new_id] = vocab[b] + vocab[a]"),
        "characters, not bytes": _BPE.replace('list(text.encode("utf-8"))', "[ord(c) for c in text]"),
    },
    "ex3-pad-batch": {
        "pads the caller's lists in place": _edit(
            _PAD, "        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)",
            "        if isinstance(s, list):\n"
            "            s.extend([pad_id] * (T - len(s)))\n"
            "        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)"),
        "a float32 buffer, cast at the end": _edit(_edit(
            _PAD, "torch.full((len(seqs), T), pad_id, dtype=torch.long)",
            "torch.full((len(seqs), T), pad_id, dtype=torch.float32)"),
            "return ids, padding_mask(lengths, T)", "return ids.long(), padding_mask(lengths, T)"),
        "ids through int32": _edit(_PAD, "ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)",
                                   "ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.int32)"),
        "left padding": _edit(_PAD, "ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)",
                              "ids[b, T - len(s):] = torch.as_tensor(s, dtype=torch.long)"),
        "pad_id ignored": _edit(_PAD, "torch.full((len(seqs), T), pad_id, dtype=torch.long)",
                                "torch.zeros(len(seqs), T, dtype=torch.long)"),
        "mask (B, T)": _edit(_PAD, "return ids, padding_mask(lengths, T)",
                             "return ids, padding_mask(lengths, T)[:, 0]"),
        "mask of the pads": _edit(_PAD, "return ids, padding_mask(lengths, T)",
                                  "return ids, ~padding_mask(lengths, T)"),
        "mask from ids != pad_id": _edit(_PAD, "return ids, padding_mask(lengths, T)",
                                         "return ids, (ids != pad_id)[:, None, :]"),
        "int32 ids": _edit(_PAD, "torch.full((len(seqs), T), pad_id, dtype=torch.long)",
                           "torch.full((len(seqs), T), pad_id, dtype=torch.int32)"),
        "fails on an empty batch": _edit(_PAD, "T = int(lengths.max()) if len(seqs) else 0",
                                         "T = int(lengths.max())"),
        "checks switched off": _edit(_PAD, "return ids, padding_mask(lengths, T)", "return ids, padding_mask(lengths, T + 1)") + _NO_CHECKS,
    },
    "ex4-one-hot": {
        "indexing": "def embed_one_hot(ids, weight):\n    return weight[ids]\n",
        "F.embedding": "def embed_one_hot(ids, weight):\n    return F.embedding(ids, weight)\n",
        "a loop over the ids": "def embed_one_hot(ids, weight):\n"
            "    rows = [weight[int(i)] for i in ids.flatten()]\n"
            "    return torch.stack(rows).reshape(*ids.shape, weight.shape[1])\n",
        "index_select": "def embed_one_hot(ids, weight):\n"
            "    return weight.index_select(0, ids.flatten()).reshape(*ids.shape, -1)\n",
        "one-hot in float32": _edit(_ONE, "return one_hot.to(weight.dtype) @ weight",
                                    "return one_hot.float() @ weight.float()"),
        "the transposed product": _edit(_ONE, "return one_hot.to(weight.dtype) @ weight",
                                        "return (weight.T @ one_hot.to(weight.dtype).transpose(-1, -2)).transpose(-1, -2)"
                                        " if ids.ndim else weight.T @ one_hot.to(weight.dtype)"),
        "off by one": _edit(_ONE, "torch.arange(V, device=ids.device)", "torch.arange(1, V + 1, device=ids.device)"),
        "a detached weight": _edit(_ONE, "return one_hot.to(weight.dtype) @ weight",
                                   "return one_hot.to(weight.dtype) @ weight.detach()"),
        "python one-hot": "def embed_one_hot(ids, weight):\n"
            "    V = weight.shape[0]\n"
            "    rows = [[1.0 if j == i else 0.0 for j in range(V)] for i in ids.flatten().tolist()]\n"
            "    oh = torch.tensor(rows, dtype=weight.dtype).reshape(*ids.shape, V)\n"
            "    return oh @ weight\n",
    },
}
CORRECT_TEXT = {
    "ex4-one-hot": {"F.one_hot": "def embed_one_hot(ids, weight):\n"
                    "    return F.one_hot(ids, weight.shape[0]).to(weight.dtype) @ weight\n"},
    "ex1-merge": {"a for loop with a skip flag": "def merge(ids, pair, new_id):\n"
                  "    out, skip = [], False\n"
                  "    for i, x in enumerate(ids):\n"
                  "        if skip:\n"
                  "            skip = False\n"
                  "            continue\n"
                  "        if i + 1 < len(ids) and x == pair[0] and ids[i + 1] == pair[1]:\n"
                  "            out.append(new_id)\n"
                  "            skip = True\n"
                  "        else:\n"
                  "            out.append(x)\n"
                  "    return out\n"},
}
MUTANTS.update(MUTANTS_TEXT)
CORRECT.update(CORRECT_TEXT)
