"""Unit tests of solutions/ch06_tokens.py's text side beyond the exercises' own tests: load_corpus
(COURSE_DATA, the cache, a download, and what it says and keeps when something is wrong, offline
included), gpt2_encoding (TIKTOKEN_CACHE_DIR, and its error with no cache and no network),
CharTokenizer, byte-level BPE against a hand-worked example, pad_batch against
torch.nn.utils.rnn.pad_sequence and embed_one_hot against nn.Embedding. Every expected value comes
from the data's README, a published count, PyTorch or a hand computation, never from the module's
own output."""
import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import course
from solutions.ch06_tokens import (CORPORA, CharTokenizer, bpe_decode, bpe_encode, cache_dir, embed_one_hot,
                                   gpt2_encoding, load_corpus, merge, pad_batch, train_bpe)

SHARED = course.ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "corpora").is_dir(), reason="needs ../shared/data")
# ../shared/data/README.md: bytes and SHA-256 of each corpus
README = {"tinyshakespeare": (1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
          "the-verdict": (20_479, "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f")}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache, no COURSE_DATA, and every download refused as if there were no network.
    Returns the list of URLs that were asked for."""
    asked = []

    def refuse(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("COURSE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


def _serve(monkeypatch, body):
    """urlopen answers every URL with `body`."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: io.BytesIO(body))


def _expect(monkeypatch, name, body):
    """The registry expects `body` for corpus `name` (a small stand-in for the real file)."""
    monkeypatch.setitem(CORPORA, name, dataclasses.replace(CORPORA[name], sha256=hashlib.sha256(body).hexdigest()))


# ---------------------------------------------------------------------------------------------
# load_corpus

@needs_shared
@pytest.mark.parametrize("name", sorted(README))
def test_load_corpus_reads_course_data_and_its_bytes_are_the_readme_s(name, monkeypatch):
    monkeypatch.setenv("COURSE_DATA", str(SHARED / "corpora"))
    data = load_corpus(name).encode("utf-8")
    assert (len(data), hashlib.sha256(data).hexdigest()) == README[name]
    assert CORPORA[name].sha256 == README[name][1]


def test_the_registry_names_a_file_and_an_https_url_for_every_corpus():
    assert sorted(CORPORA) == sorted(README)
    for c in CORPORA.values():
        assert c.url.startswith("https://") and c.url.endswith(".txt") and "/" not in c.file


def test_an_unknown_corpus_names_the_ones_there_are(offline):
    with pytest.raises(ValueError, match="tinyshakespeare") as info:
        load_corpus("shakespeare")
    assert "'shakespeare'" in str(info.value)
    assert offline == []                                   # nothing was downloaded


def test_a_wrong_file_in_course_data_is_refused_and_left_as_it_was(offline, monkeypatch, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    bad = folder / "the-verdict.txt"
    bad.write_bytes(b"I HAD always thought Jack Gisburn rather a cheap genius--")  # cut short
    before = bad.read_bytes()
    monkeypatch.setenv("COURSE_DATA", str(folder))
    with pytest.raises(ValueError) as info:
        load_corpus("the-verdict")
    message = str(info.value)
    assert str(bad) in message and CORPORA["the-verdict"].url in message and "COURSE_DATA" in message
    assert bad.read_bytes() == before                      # the learner's file is not touched
    assert offline == []                                   # and not replaced behind their back


def test_offline_with_no_copy_says_where_to_put_the_file(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "empty"))   # set, but the file is not there
    with pytest.raises(RuntimeError) as info:
        load_corpus("tinyshakespeare")
    message = str(info.value)
    c = CORPORA["tinyshakespeare"]
    for words in ("COURSE_DATA", c.file, c.url, c.sha256, "Temporary failure"):
        assert words in message, words
    assert offline == [c.url]
    assert list(cache_dir().glob("*")) == []               # no .part left behind


def test_a_download_is_checked_cached_and_not_fetched_again(offline, monkeypatch):
    body = "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode()
    name = "tinyshakespeare"
    _expect(monkeypatch, name, body)
    _serve(monkeypatch, body)
    assert load_corpus(name) == body.decode()
    assert (cache_dir() / CORPORA[name].file).read_bytes() == body
    assert [p.name for p in cache_dir().iterdir()] == [CORPORA[name].file]
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    assert load_corpus(name) == body.decode()              # from the cache, offline


def test_a_download_with_the_wrong_bytes_is_refused_and_not_kept(offline, monkeypatch):
    _serve(monkeypatch, b"<html>404: Not Found</html>")
    with pytest.raises(RuntimeError, match="SHA-256") as info:
        load_corpus("the-verdict")
    assert CORPORA["the-verdict"].url in str(info.value)
    assert list(cache_dir().glob("*")) == []


def test_a_corrupt_cache_is_downloaded_again(offline, monkeypatch):
    body = b"a tiny corpus\n"
    name = "the-verdict"
    _expect(monkeypatch, name, body)
    cache_dir().mkdir(parents=True)
    (cache_dir() / CORPORA[name].file).write_bytes(b"a tiny corp")     # an earlier cut download
    _serve(monkeypatch, body)
    assert load_corpus(name) == body.decode()
    assert (cache_dir() / CORPORA[name].file).read_bytes() == body


def test_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "build-a-gpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "build-a-gpt"


# ---------------------------------------------------------------------------------------------
# gpt2_encoding

@needs_shared
def test_gpt2_encoding_from_the_offline_cache():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == 50256        # GPT-2's vocabulary
    assert enc.decode([enc.eot_token]) == "<|endoftext|>"
    ids = enc.encode_ordinary("Hello world")
    assert len(ids) == 2 and enc.decode(ids[1:]) == " world"      # the space belongs to the word
    text = "naïve café — 日本語 ✓\n\tend"
    assert enc.decode(enc.encode_ordinary(text)) == text


@needs_shared
def test_tiny_shakespeare_has_nanogpts_published_token_counts(monkeypatch):
    """nanoGPT's data/shakespeare/readme.md: the first 90% of the characters encode to 301,966
    GPT-2 tokens, the last 10% to 36,059."""
    monkeypatch.setenv("COURSE_DATA", str(SHARED / "corpora"))
    text, enc = load_corpus("tinyshakespeare"), gpt2_encoding()
    n = int(len(text) * 0.9)
    assert len(enc.encode_ordinary(text[:n])) == 301_966
    assert len(enc.encode_ordinary(text[n:])) == 36_059


def test_gpt2_encoding_with_no_cache_and_no_network_says_what_to_set(tmp_path):
    # a fresh process: tiktoken keeps encodings it has loaded for the life of the process
    code = ("import requests\n"
            "def refuse(*a, **k):\n"
            "    raise requests.ConnectionError('no network')\n"
            "requests.get = refuse\n"
            "from solutions.ch06_tokens import gpt2_encoding\n"
            "gpt2_encoding()\n")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:") and "TIKTOKEN_CACHE_DIR" in last and "no network" in last
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# characters and BPE

@needs_shared
def test_char_tokenizer_on_tiny_shakespeare(monkeypatch):
    monkeypatch.setenv("COURSE_DATA", str(SHARED / "corpora"))
    text = load_corpus("tinyshakespeare")
    tok = CharTokenizer(text)
    assert tok.vocab_size == 65                  # nanoGPT's shakespeare_char: "vocab size: 65"
    assert tok.chars == sorted(tok.chars) and tok.chars[0] == "\n" and tok.chars[1] == " "
    ids = tok.encode(text[:2000])
    assert tok.decode(ids) == text[:2000] and max(ids) < 65
    with pytest.raises(ValueError, match="é"):
        tok.encode("café")


def test_merge_by_hand():
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([5, 5, 5], (5, 5), 7) == [7, 5]          # left to right, no overlap
    assert merge([5, 5, 5, 5], (5, 5), 7) == [7, 7]
    assert merge([], (1, 2), 9) == [] and merge([1], (1, 2), 9) == [1]
    ids = [1, 2, 1]
    merge(ids, (1, 2), 9)
    assert ids == [1, 2, 1]                                 # a new list; the input is kept


def test_bpe_on_a_hand_worked_example():
    """"aaabdaaabac": aa (4 times) -> 256: 256 a b d 256 a b a c; then (256, a) and (a, b) both
    occur twice and the first seen wins -> 257: 257 b d 257 b a c; then (257, b) -> 258."""
    a, b, c, d = b"abcd"
    merges = train_bpe("aaabdaaabac", 3)
    assert list(merges.items()) == [((a, a), 256), ((256, a), 257), ((257, b), 258)]
    assert bpe_encode("aaabdaaabac", merges) == [258, d, 258, a, c]
    assert bpe_decode([258, d, 258, a, c], merges) == "aaabdaaabac"
    # every pair left occurs once; merging continues until one id is left: 4 more merges
    merges = train_bpe("aaabdaaabac", 100)
    assert len(merges) == 7 and bpe_encode("aaabdaaabac", merges) == [262]


def test_bpe_is_byte_level_and_round_trips_any_text():
    text = "héllo wörld, héllo wörld ✓ 日本"
    merges = train_bpe(text, 20)
    for s in (text, "wörld ✓", "", "unseen: ü"):
        ids = bpe_encode(s, merges)
        assert bpe_decode(ids, merges) == s
        assert len(ids) <= len(s.encode("utf-8"))
    assert bpe_encode("ü", {}) == list("ü".encode("utf-8")) == [0xC3, 0xBC]
    assert bpe_decode([0xC3], {}) == "\ufffd"               # half a character
    with pytest.raises(ValueError, match="256"):
        bpe_decode([104, 256], {})


# ---------------------------------------------------------------------------------------------
# pad_batch and embed_one_hot

@pytest.mark.parametrize("pad_id", [0, 50256, -1])
def test_pad_batch_against_pad_sequence(pad_id):
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(0, 50257, (n,), generator=g) for n in (3, 7, 1, 7)]
    ids, mask = pad_batch(seqs, pad_id=pad_id)
    want = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    assert ids.dtype == torch.long and torch.equal(ids, want)
    lengths = torch.tensor([3, 7, 1, 7])
    assert mask.shape == (4, 1, 7) and mask.dtype == torch.bool
    assert torch.equal(mask[:, 0].sum(-1), lengths)
    assert torch.equal(mask[:, 0], torch.arange(7) < lengths[:, None])


def test_embed_one_hot_is_nn_embedding_and_so_is_its_gradient():
    g = torch.Generator().manual_seed(7)
    emb = nn.Embedding(11, 5, dtype=torch.float64)
    nn.init.normal_(emb.weight, generator=g)
    ids = torch.tensor([[3, 3, 0], [10, 3, 7]])
    gy = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    weight = emb.weight.detach().clone().requires_grad_()
    out = embed_one_hot(ids, weight)
    torch.testing.assert_close(out, emb(ids), rtol=0, atol=0)
    out.backward(gy)
    emb(ids).backward(gy)
    torch.testing.assert_close(weight.grad, emb.weight.grad, rtol=0, atol=1e-15)
    untouched = [r for r in range(11) if r not in (0, 3, 7, 10)]
    assert not weight.grad[untouched].any()                  # rows not in the batch get no gradient
