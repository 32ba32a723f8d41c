"""Reference solutions for 6. Tokens, embeddings and positional encoding.

Generated from chapters/ch06_tokens/ch06_tokens.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import hashlib
import math
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from solutions.ch03_attention import padding_mask


@dataclass(frozen=True)
class Download:
    file: str  # its name in COURSE_DATA and in the cache
    url: str  # where a real user's machine downloads it from
    sha256: str  # of the file's bytes: what the course has tested


CORPORA = {
    "tinyshakespeare": Download(
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
        "tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "the-verdict": Download(
        "the-verdict.txt",
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/"
        "01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
}


def cache_dir():
    """Where downloads are kept: $XDG_CACHE_HOME/build-a-gpt, else
    ~/.cache/build-a-gpt."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "build-a-gpt"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(d, name):
    """The path of the file of Download d (called `name` in messages),
    checked against its SHA-256.

    Looks in the folder $COURSE_DATA first, then in cache_dir(); otherwise
    downloads the file into cache_dir(). Never overwrites a file of yours."""
    folder = os.environ.get("COURSE_DATA")
    if folder and (Path(folder) / d.file).is_file():
        path = Path(folder) / d.file
        if _sha256(path) != d.sha256:
            raise ValueError(
                f"{path} is not the file the course expects (its SHA-256 is "
                f"{_sha256(path)}, not {d.sha256}). Replace it with a fresh "
                f"copy of {d.url}, or unset COURSE_DATA to download it."
            )
        return path
    path = cache_dir() / d.file
    if not (path.is_file() and _sha256(path) == d.sha256):
        part = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(d.url, timeout=60) as response:
                with open(part, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
        except OSError as err:  # no network, a proxy, a full disk, ...
            part.unlink(missing_ok=True)
            raise RuntimeError(
                f"could not download {name!r} from {d.url} ({err}). Put the "
                f"file {d.file} (SHA-256 {d.sha256}) in a folder and set the "
                f"environment variable COURSE_DATA to that folder, or into "
                f"{path.parent}."
            ) from None
        got = _sha256(part)
        if got != d.sha256:
            part.unlink()
            raise RuntimeError(
                f"the download of {d.url} has SHA-256 {got}, "
                f"not {d.sha256}: the file has changed or the download was "
                f"cut short. Try again, or put a good copy in COURSE_DATA."
            )
        part.replace(path)
    return path


def load_corpus(name):
    """The text of corpus `name` (a key of CORPORA), found or downloaded and
    checked by fetch."""
    if name not in CORPORA:
        raise ValueError(
            f"no corpus {name!r}; the course has {sorted(CORPORA)}"
        )
    return fetch(CORPORA[name], name).read_text(encoding="utf-8")


def gpt2_encoding():
    """tiktoken's GPT-2 encoding; tiktoken caches its files under
    $TIKTOKEN_CACHE_DIR (a clear error if it can neither find nor fetch them).
    """
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # requests' connection errors, a corrupt cache
        raise RuntimeError(
            "tiktoken could not load the 'gpt2' encoding "
            f"({type(err).__name__}: {err}). With no network, set "
            "TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cached "
            "vocab.bpe and encoder.json (see the course's data README)."
        ) from None


class CharTokenizer:
    """Character-level ids: one id per distinct character of a text, in sorted
    order (chapter 8's small-model baseline)."""

    def __init__(self, text):
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(
                f"characters not in the vocabulary: {unknown[:10]}"
            )
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def merge(ids, pair, new_id):
    """A new list: `ids` with every occurrence of the two-id `pair` replaced by
    `new_id`, scanning left to right without overlaps."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text, n_merges):
    """Byte-level BPE: start from the UTF-8 bytes of `text` (ids 0-255) and
    merge the most frequent adjacent pair n_merges times (fewer if the
    sequence is down to one id); ties go to the pair seen first. Returns
    {pair: new_id}, new ids 256, 257, ... in the order they were made."""
    ids = list(text.encode("utf-8"))
    merges = {}
    for new_id in range(256, 256 + n_merges):
        counts = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=counts.get)  # the first of the most frequent
        ids = merge(ids, best, new_id)
        merges[best] = new_id
    return merges


def bpe_encode(text, merges):
    """Token ids of `text`: its UTF-8 bytes, then the learned merges applied
    in the order they were learned."""
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in merges]
        if not pairs:
            break
        pair = min(pairs, key=merges.get)  # the earliest merge that applies
        ids = merge(ids, pair, merges[pair])
    return ids


def bpe_decode(ids, merges):
    """The text of token ids: each id's bytes, joined and decoded as UTF-8
    (an invalid byte sequence becomes U+FFFD); ValueError for an unknown id."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    unknown = [i for i in ids if i not in vocab]
    if unknown:
        raise ValueError(f"token ids not in the vocabulary: {unknown[:5]}")
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def pad_batch(seqs, pad_id=0):
    """B sequences of token ids (lists or 1-D tensors) of unequal lengths ->
    ids (B, T) int64, each sequence followed by pad_id up to T = the longest
    length, and chapter 3's padding mask (B, 1, T), True at real tokens."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    T = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return ids, padding_mask(lengths, T)


def embed_one_hot(ids, weight):
    """ids: (...) int64 in [0, V); weight: (V, d) -> (..., d), computed as
    one_hot(ids) @ weight."""
    V = weight.shape[0]
    one_hot = ids[..., None] == torch.arange(V, device=ids.device)  # (..., V)
    return one_hot.to(weight.dtype) @ weight


def sinusoidal_encoding(n_pos, d_model, base=10000.0):
    """The paper's PE, (n_pos, d_model) float32: PE[pos, 2i] =
    sin(pos / base^(2i / d_model)), PE[pos, 2i + 1] = cos(the same)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even, not {d_model}")
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (n_pos, 1)
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i: (d_model/2,)
    angle = pos / base ** (i2 / d_model)  # (n_pos, d_model/2)
    pe = torch.stack([angle.sin(), angle.cos()], dim=-1)  # (n_pos, d/2, 2)
    return pe.reshape(n_pos, d_model).float()


def shift_matrix(k, d_model, base=10000.0):
    """M_k, (d_model, d_model) float64, with PE[pos + k] = M_k @ PE[pos] for
    every pos: one 2 x 2 rotation per (sin, cos) pair."""
    if d_model % 2:
        raise ValueError(f"d_model must be even, not {d_model}")
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64)
    omega_k = k / base ** (i2 / d_model)  # (d_model/2,)
    c, s = omega_k.cos(), omega_k.sin()
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    M[0::2, 0::2] = torch.diag(c)  # sin(w(p+k)) = sin(wp) cos(wk)
    M[0::2, 1::2] = torch.diag(s)  #              + cos(wp) sin(wk)
    M[1::2, 0::2] = torch.diag(-s)  # cos(w(p+k)) = -sin(wp) sin(wk)
    M[1::2, 1::2] = torch.diag(c)  #               + cos(wp) cos(wk)
    return M


@dataclass
class EmbeddingConfig:
    vocab_size: int = 50257  # GPT-2's BPE: 256 bytes + 50,000 merges + 1
    block_size: int = 1024  # the longest sequence; wpe has one row per position
    d_model: int = 768  # width of the token vectors
    dropout: float = 0.0  # after adding the two embeddings


class GPTEmbedding(nn.Module):
    """GPT-2's input layer: token embedding wte plus learned position embedding
    wpe, then dropout; logits() is the tied output projection."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.block_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx):
        """idx: (B, T) int64 token ids, T <= block_size -> (B, T, d_model)."""
        T = idx.shape[-1]
        if T > self.config.block_size:
            raise ValueError(
                f"a sequence of {T} tokens is longer than "
                f"block_size={self.config.block_size}: wpe has no row for its "
                "last positions"
            )
        pos = torch.arange(T, device=idx.device)  # (T,)
        return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d_model)

    def logits(self, h):
        """h: (B, T, d_model) -> (B, T, vocab_size), h @ wte.weight^T."""
        return h @ self.wte.weight.T


def embedding_param_count(vocab_size, block_size, d_model, tied=True):
    """Parameters of wte and wpe, plus a separate vocab_size x d_model output
    matrix when the output projection is not tied."""
    count = (vocab_size + block_size) * d_model
    return count if tied else count + vocab_size * d_model


def apply_rope(x, positions, base=10000.0):
    """Rotary position embedding: x (..., T, d) with d even, positions (T,)
    int64 -> the same shape and dtype, each pair (x[2i], x[2i+1]) at position
    m rotated by the angle m * base^(-2i/d)."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"the last axis of x must be even, not {d}")
    i2 = torch.arange(0, d, 2, dtype=torch.float64, device=x.device)
    angle = positions.to(x.device, torch.float64)[:, None] / base ** (i2 / d)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)  # pairs back in place: (..., T, d)
