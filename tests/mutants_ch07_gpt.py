"""Wrong or forbidden solutions to chapter 7's exercises. Each must fail the exercise's visible or
hidden tests (tests/test_mutants.py); CORRECT ones, written another way, must pass. The references
are read from the chapter notebook, so the mutants follow its edits."""
import course
from mutant_tools import edit as _edit

_NB = course.read(course.CHAPTERS / "ch07_gpt" / "ch07_gpt.ipynb")


def _reference(grade_id):
    return next(course.reference_source(c.source) for c in _NB.cells
                if course.nbgrader_meta(c).get("grade_id") == grade_id)


# ---------------------------------------------------------------------------------------------
# ex1: gpt_param_count

_COUNT = _reference("ex1-param-count")
_COUNT_HEAD = "def gpt_param_count(config):\n"

# ---------------------------------------------------------------------------------------------
# ex2: GPT

_GPT = _reference("ex2-gpt")
_GPT_TIE = "self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix"
_GPT_LOSS = """        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-1
        )"""

# ---------------------------------------------------------------------------------------------
# ex3: init_gpt2_

_INIT = _reference("ex3-init")
_INIT_HEAD = "def init_gpt2_(model, std=0.02):\n"

# ---------------------------------------------------------------------------------------------
# ex4: top_k_filter, top_p_filter

_FILTERS = _reference("ex4-filters")
_TOPK_KEEP = "return logits.masked_fill(logits < kth, float(\"-inf\"))"
_TOPP_ABOVE = "above = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above"
_TOPP_DROP = "drop = (above >= p).scatter(-1, order, above >= p)  # back to vocab order"

# ---------------------------------------------------------------------------------------------
# ex5: next_token, generate

_GEN = _reference("ex5-generate")
_GEN_CROP = "context = idx[:, -model.config.block_size :]  # what wpe can place"
_GEN_DRAW = "return torch.multinomial(probs, 1, generator=generator)"

# ---------------------------------------------------------------------------------------------
# ex6: attention_with_cache

_ATT = _reference("ex6-attention-cache")
_ATT_MASK = "mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)"
_ATT_SDPA = "y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)"

# ---------------------------------------------------------------------------------------------
# ex7: forward_with_cache

_FWD = _reference("ex7-model-cache")
_FWD_POS = "pos = torch.arange(past, past + T, device=idx.device)  # (T,)"

# ---------------------------------------------------------------------------------------------
# ex8: from_hf_gpt2

_CONV = _reference("ex8-converter")

MUTANTS = {
    "ex1-param-count": {
        "the output projection counted again (untied)": _edit(
            _COUNT, "config.vocab_size, config.block_size, config.d_model\n",
            "config.vocab_size, config.block_size, config.d_model, tied=False\n"),
        "no final LayerNorm": _edit(_COUNT, "return embeddings + blocks + ln_f", "return embeddings + blocks"),
        "ln_f always with a bias": _edit(
            _COUNT, "ln_f = 2 * config.d_model if config.bias else config.d_model", "ln_f = 2 * config.d_model"),
        "d_ff taken as 4 d_model": _edit(_COUNT, "config.d_model, config.d_ff, config.bias",
                                         "config.d_model, 4 * config.d_model, config.bias"),
        "biases always counted": _edit(_COUNT, "config.d_model, config.d_ff, config.bias",
                                       "config.d_model, config.d_ff, True"),
        "a float": _edit(_COUNT, "return embeddings + blocks + ln_f", "return float(embeddings + blocks + ln_f)"),
        "GPT-2 small's answer for every config": _COUNT_HEAD + "    return 124_439_808\n",
        "chapter 1's formula (always biases and 4 d_model)": _COUNT_HEAD + (
            "    from solutions.ch01_tensors import gpt2_param_count\n"
            "    return gpt2_param_count(config.vocab_size, config.block_size, config.d_model, config.n_layer)\n"),
    },
    "ex2-gpt": {
        "not tied: a second matrix": _edit(_GPT, _GPT_TIE, "pass"),
        "tied by copying the values": _edit(
            _GPT, _GPT_TIE, "self.lm_head.weight.data.copy_(self.transformer.wte.weight.data)"),
        "no final LayerNorm in forward": _edit(
            _GPT, "logits = self.lm_head(self.transformer.ln_f(x))", "logits = self.lm_head(x)"),
        "the loss counts the ignored positions": _edit(
            _GPT, "targets.flatten(), ignore_index=-1", "targets.flatten().clamp(min=0)"),
        "the loss summed, not averaged": _edit(
            _GPT, "targets.flatten(), ignore_index=-1", "targets.flatten(), ignore_index=-1, reduction='sum'"),
        "Post-LN: each block's output normalised again": _edit(
            _GPT, "            x = block(x)  # (B, T, d_model)", "            x = self.transformer.ln_f(block(x))"),
        "positions skipped: wte only": _edit(
            _GPT, "x = self.transformer(idx)  # wte[idx] + wpe[t], dropout: (B, T, d_model)",
            "x = self.transformer.drop(self.transformer.wte(idx))"),
        "the blocks in reverse order": _edit(
            _GPT, "for block in self.transformer.h:", "for block in reversed(self.transformer.h):"),
        "one block used n_layer times": _edit(
            _GPT, "Block(config) for _ in range(config.n_layer)", "[Block(config)] * config.n_layer"),
        "an extra dropout after ln_f": _edit(
            _GPT, "logits = self.lm_head(self.transformer.ln_f(x))",
            "logits = self.lm_head(self.transformer.drop(self.transformer.ln_f(x)))"),
        "lm_head with a bias": _edit(
            _GPT, "nn.Linear(config.d_model, config.vocab_size, bias=False)",
            "nn.Linear(config.d_model, config.vocab_size, bias=True)"),
        "ln_f always with a bias": _edit(
            _GPT, "nn.LayerNorm(config.d_model, bias=config.bias)", "nn.LayerNorm(config.d_model)"),
        "loss only from the last position": _edit(
            _GPT, _GPT_LOSS, "        loss = F.cross_entropy(logits[:, -1], targets[:, -1], ignore_index=-1)"),
    },
    "ex3-init": {
        "nanoGPT's walk over modules (the tied matrix drawn twice)": _INIT_HEAD + (
            "    with torch.no_grad():\n"
            "        for m in model.modules():\n"
            "            for name, p in m.named_parameters(recurse=False):\n"
            "                if p.dim() == 2:\n"
            "                    p.normal_(0.0, std)\n"
            "                elif name == 'bias' or not hasattr(m, 'normalized_shape') and 'ln' not in type(m).__name__:\n"
            "                    p.zero_()\n"
            "        for name, p in model.named_parameters():\n"
            "            if '.ln_' in name and name.endswith('weight'):\n"
            "                p.fill_(1.0)\n"
            "            elif name.endswith('c_proj.weight'):\n"
            "                p.normal_(0.0, std / math.sqrt(2 * model.config.n_layer))\n"),
        "scaled by 1/sqrt(n_layer)": _edit(_INIT, "std / math.sqrt(2 * n_layer)", "std / math.sqrt(n_layer)"),
        "no residual scaling": _edit(_INIT, "std / math.sqrt(2 * n_layer)", "std"),
        "only the attention's c_proj scaled": _edit(_INIT, 'name.endswith("c_proj.weight")',
                                                    'name.endswith("attn.c_proj.weight")'),
        "wpe at 0.01 (OpenAI's TF code)": _edit(
            _INIT, "            elif p.dim() == 2:  # wte, wpe, c_attn, c_fc\n                p.normal_(0.0, std)",
            "            elif p.dim() == 2:  # wte, wpe, c_attn, c_fc\n"
            "                p.normal_(0.0, std / 2 if 'wpe' in name else std)"),
        "LayerNorm gains left as they were": _edit(_INIT, "p.fill_(1.0)", "pass"),
        "biases left as they were": _edit(_INIT, "p.zero_()", "pass"),
        "uniform instead of normal": _edit(_INIT, "p.normal_(0.0, std)\n", "p.uniform_(-std * 3**0.5, std * 3**0.5)\n"),
        "std hard-coded at 0.02": _edit(_INIT, "p.normal_(0.0, std)\n", "p.normal_(0.0, 0.02)\n"),
        "new Parameters (the tie broken)": _INIT_HEAD + (
            "    n_layer = model.config.n_layer\n"
            "    for name, p in list(model.named_parameters()):\n"
            "        *path, leaf = name.split('.')\n"
            "        owner = model.get_submodule('.'.join(path))\n"
            "        with torch.no_grad():\n"
            "            if name.endswith('c_proj.weight'):\n"
            "                new = torch.empty_like(p).normal_(0.0, std / math.sqrt(2 * n_layer))\n"
            "            elif p.dim() == 2:\n"
            "                new = torch.empty_like(p).normal_(0.0, std)\n"
            "            elif '.ln_' in name and name.endswith('weight'):\n"
            "                new = torch.ones_like(p)\n"
            "            else:\n"
            "                new = torch.zeros_like(p)\n"
            "        setattr(owner, leaf, torch.nn.Parameter(new))\n"),
        "with gradients tracked": _edit(_INIT, "    with torch.no_grad():\n        for name, p in model.named_parameters():",
                                        "    for name, p in model.named_parameters():\n        if True:"),
    },
    "ex4-filters": {
        "top-k: ties with the k-th dropped": _edit(
            _FILTERS, _TOPK_KEEP,
            "idx = logits.topk(min(k, logits.shape[-1]), dim=-1).indices\n"
            "    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)\n"
            "    return logits.masked_fill(~keep, float('-inf'))"),
        "top-k: one too many": _edit(_FILTERS, "min(k, logits.shape[-1])", "min(k + 1, logits.shape[-1])"),
        "top-k: no ValueError": _edit(_FILTERS, "    if k < 1:\n        raise ValueError(f\"top_k must be at least 1, not {k}\")\n", ""),
        "top-k: in place": _edit(_FILTERS, _TOPK_KEEP, "return logits.masked_fill_(logits < kth, float(\"-inf\"))"),
        "top-p: the token that crosses p dropped": _edit(_FILTERS, _TOPP_ABOVE, "above = probs.cumsum(dim=-1)"),
        "top-p: mass > p instead of >= p": _edit(_FILTERS, _TOPP_DROP,
                                                 "drop = (above > p).scatter(-1, order, above > p)"),
        "top-p: the mask left in sorted order": _edit(_FILTERS, _TOPP_DROP, "drop = above >= p"),
        "top-p: ascending sort": _edit(_FILTERS, "logits.sort(dim=-1, descending=True)", "logits.sort(dim=-1)"),
        "top-p: on the logits, not probabilities": _edit(
            _FILTERS, "probs = sorted_logits.softmax(dim=-1)", "probs = sorted_logits / sorted_logits.sum(-1, keepdim=True)"),
        "top-p: p = 1 not special (rounding drops the tail)": _edit(
            _FILTERS, "    if p == 1:\n        return logits.clone()\n", ""),
        "top-p: exp without the max (overflow)": _edit(
            _FILTERS, "probs = sorted_logits.softmax(dim=-1)",
            "probs = sorted_logits.exp() / sorted_logits.exp().sum(-1, keepdim=True)"),
    },
    "ex5-generate": {
        "greedy by sampling at a tiny temperature": _edit(
            _GEN, "    if temperature == 0:\n        return logits.argmax(dim=-1, keepdim=True)\n", "    temperature = max(temperature, 1e-6)\n"),
        "the filters before the temperature": _edit(
            _GEN, "    logits = logits / temperature\n    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
                  "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n",
            "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
            "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n    logits = logits / temperature\n"),
        "the generator ignored": _edit(_GEN, _GEN_DRAW, "return torch.multinomial(probs, 1)"),
        "no crop to block_size": _edit(_GEN, _GEN_CROP, "context = idx"),
        "cropped one token short": _edit(_GEN, _GEN_CROP, "context = idx[:, -(model.config.block_size - 1):]"),
        "the first position's logits": _edit(_GEN, "logits = model(context)[0][:, -1]", "logits = model(context)[0][:, 0]"),
        "the mode not restored": _edit(_GEN, "    model.train(was_training)\n", ""),
        "gradients tracked": _edit(_GEN, "    with torch.no_grad():\n        for _ in range(max_new_tokens):",
                                   "    if True:\n        for _ in range(max_new_tokens):"),
        "training mode left on": _edit(_GEN, "    model.eval()\n", ""),
        "top-p before top-k": _edit(
            _GEN, "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
                  "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n",
            "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n"
            "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"),
        "argmax of the probabilities after sampling once": _edit(
            _GEN, _GEN_DRAW, "torch.multinomial(probs, 1, generator=generator)\n    return probs.argmax(-1, keepdim=True)"),
    },
    "ex6-attention-cache": {
        "is_causal=True (top-left)": _edit(_ATT, _ATT_SDPA, "y = F.scaled_dot_product_attention(q, k, v, is_causal=True)"),
        "no mask": _edit(_ATT, _ATT_SDPA, "y = F.scaled_dot_product_attention(q, k, v)"),
        "the new keys before the old": _edit(
            _ATT, "k = torch.cat([cache[0], k], dim=2)", "k = torch.cat([k, cache[0]], dim=2)"),
        "concatenated on the wrong axis": _edit(
            _ATT, "v = torch.cat([cache[1], v], dim=2)", "v = torch.cat([cache[1], v], dim=-1)[..., :v.shape[-1]]"),
        "the mask one step behind": _edit(_ATT, ".tril(S - T)", ".tril(S - T - 1)"),
        "the cache returned unchanged": _edit(_ATT, "return attn.c_proj(merge_heads(y)), (k, v)",
                                              "return attn.c_proj(merge_heads(y)), cache if cache is not None else (k, v)"),
        "the cache extended in place": _edit(
            _ATT, "    if cache is not None:\n        k = torch.cat([cache[0], k], dim=2)  # (B, h, past + T, d_k)\n"
                  "        v = torch.cat([cache[1], v], dim=2)\n",
            "    if cache is not None:\n        k = torch.cat([cache[0], k], dim=2)\n        v = torch.cat([cache[1], v], dim=2)\n"
            "        cache[0].mul_(1.0001)\n"),
        "without c_proj": _edit(_ATT, "return attn.c_proj(merge_heads(y)), (k, v)", "return merge_heads(y), (k, v)"),
    },
    "ex7-model-cache": {
        "positions from 0 each call": _edit(_FWD, _FWD_POS, "pos = torch.arange(T, device=idx.device)"),
        "no ln_1 before the attention": _edit(
            _FWD, "attention_with_cache(block.attn, block.ln_1(x), layer_cache)",
            "attention_with_cache(block.attn, x, layer_cache)"),
        "every block given block 0's cache": _edit(
            _FWD, "layer_cache = None if cache is None else cache[i]", "layer_cache = None if cache is None else cache[0]"),
        "the block_size check off by one": _edit(_FWD, "if past + T > model.config.block_size:",
                                                 "if past + T > model.config.block_size + 1:"),
        "no final LayerNorm": _edit(_FWD, "return model.lm_head(t.ln_f(x)), new_cache", "return model.lm_head(x), new_cache"),
        "the old cache returned": _edit(_FWD, "return model.lm_head(t.ln_f(x)), new_cache",
                                        "return model.lm_head(t.ln_f(x)), new_cache if cache is None else cache"),
        "the MLP without ln_2": _edit(_FWD, "x = x + block.mlp(block.ln_2(x))", "x = x + block.mlp(x)"),
    },
    "ex8-converter": {
        "nothing transposed": _edit(_CONV, "out[name] = t.t() if name.endswith(CONV1D) else t", "out[name] = t"),
        "every matrix transposed (wte too)": _edit(_CONV, "out[name] = t.t() if name.endswith(CONV1D) else t",
                                                   "out[name] = t.t() if t.dim() == 2 else t"),
        "c_attn.bias dropped with the mask ('attn.bias' without the dot)": _edit(
            _CONV, 'name.endswith((".attn.bias", ".attn.masked_bias"))', 'name.endswith(("attn.bias", "attn.masked_bias"))'),
        "the mask buffers kept": _edit(_CONV, "        if name.endswith((\".attn.bias\", \".attn.masked_bias\")):\n"
                                              "            continue  # the causal mask, a buffer: not a parameter\n", ""),
        "no lm_head when the file has none": _edit(
            _CONV, '    out.setdefault("lm_head.weight", out["transformer.wte.weight"])  # tied\n', ""),
        "the prefix always added": _edit(
            _CONV, '        if not name.startswith(("transformer.", "lm_head.")):\n'
                   '            name = "transformer." + name  # the published file\'s names\n',
            '        name = "transformer." + name\n'),
        "the mask buffers deleted from the input": _edit(
            _CONV, "    out = {}\n",
            "    for name in [n for n in state if n.endswith('.attn.bias')]:\n        del state[name]\n    out = {}\n"),
        "only the attention's matrices transposed": _edit(
            _CONV, "out[name] = t.t() if name.endswith(CONV1D) else t",
            "out[name] = t.t() if name.endswith(CONV1D[:2]) else t"),
    },
}

CORRECT = {
    "ex1-param-count": {
        "counted on the meta device": _COUNT_HEAD + (
            "    with torch.device('meta'):\n"
            "        emb = nn.Embedding(config.vocab_size, config.d_model), nn.Embedding(config.block_size, config.d_model)\n"
            "        blocks = [Block(config) for _ in range(config.n_layer)]\n"
            "        ln_f = nn.LayerNorm(config.d_model, bias=config.bias)\n"
            "    parts = [*emb, *blocks, ln_f]\n"
            "    return sum(p.numel() for m in parts for p in m.parameters())\n"),
    },
    "ex3-init": {
        "with nn.init": _INIT_HEAD + (
            "    L = model.config.n_layer\n"
            "    for name, p in model.named_parameters():\n"
            "        with torch.no_grad():\n"
            "            if name.endswith('c_proj.weight'):\n"
            "                nn.init.normal_(p, mean=0.0, std=std / (2 * L) ** 0.5)\n"
            "            elif p.ndim == 2:\n"
            "                nn.init.normal_(p, mean=0.0, std=std)\n"
            "            elif name.endswith('weight'):\n"
            "                nn.init.ones_(p)\n"
            "            else:\n"
            "                nn.init.zeros_(p)\n"),
    },
    "ex4-filters": {
        "a loop-free top-p with sort and gather": _FILTERS.replace(
            _TOPP_DROP, "drop = torch.zeros_like(above, dtype=torch.bool).scatter(-1, order, above >= p)"),
    },
}
