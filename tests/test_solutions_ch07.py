"""Chapter 7's reference code against independent oracles: Hugging Face's GPT2LMHeadModel (random
small configs, no download), the safetensors package, chapter 1's hand count, and the offline
behaviour of the GPT-2 download."""
import math
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

import course
from solutions.ch01_tensors import gpt2_param_count
from solutions.ch06_tokens import cache_dir
from solutions.ch07_gpt import (GPT, GPT2_SMALL, PRESETS, GPTConfig, from_hf_gpt2, generate, generate_cached,
                                gpt_param_count, init_gpt2_, load_gpt2, read_safetensors)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

CONFIGS = [dict(vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=3),
           dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4),
           dict(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=1)]


def hf_model(seed, **kwargs):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**kwargs, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def ours_for(kwargs):
    return GPTConfig(vocab_size=kwargs["vocab_size"], block_size=kwargs["n_positions"], d_model=kwargs["n_embd"],
                     n_layer=kwargs["n_layer"], n_head=kwargs["n_head"])


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_converted_gpt2lmheadmodel_gives_its_logits_and_loss(kwargs):
    hf = hf_model(0, **kwargs)
    model = GPT(ours_for(kwargs)).eval()
    model.load_state_dict(from_hf_gpt2(hf.state_dict()), strict=True)
    idx = torch.randint(0, kwargs["vocab_size"], (3, kwargs["n_positions"]))
    with torch.no_grad():
        theirs = hf(idx, labels=idx)
        logits, loss = model(idx, torch.cat([idx[:, 1:], torch.full((3, 1), -1)], dim=1))
    torch.testing.assert_close(logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, theirs.loss, atol=1e-5, rtol=1e-5)


def test_state_dict_names_are_gpt2s_and_nanogpts():
    # nanoGPT's GPT and transformers' GPT2LMHeadModel use these names; nanoGPT's layout is nn.Linear's,
    # so its checkpoints load as they are, and Hugging Face's after from_hf_gpt2's transposes
    kwargs = CONFIGS[0]
    hf_names = [k for k in hf_model(0, **kwargs).state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    assert list(GPT(ours_for(kwargs)).state_dict()) == hf_names


def test_parameter_counts_are_chapter_1s_hand_count():
    assert gpt_param_count(GPTConfig.preset("gpt2")) == 124_439_808
    for name in PRESETS:
        cfg = GPTConfig.preset(name)
        with torch.device("meta"):
            n = sum(p.numel() for p in GPT(cfg).parameters())
        assert n == gpt_param_count(cfg) == gpt2_param_count(50257, 1024, cfg.d_model, cfg.n_layer)
    with pytest.raises(ValueError, match="gpt2-xl"):
        GPTConfig.preset("gpt3")


def test_loss_at_initialisation_is_about_ln_v():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, block_size=64, d_model=64, n_head=4, n_layer=4)
    model = GPT(cfg)
    init_gpt2_(model)
    idx, targets = torch.randint(0, 65, (8, 64)), torch.randint(0, 65, (8, 64))
    with torch.no_grad():
        loss = model.eval()(idx, targets)[1].item()
    assert abs(loss - math.log(65)) < 0.1


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                    dict(temperature=1.3, top_p=0.8), dict(top_k=10, top_p=0.5)])
def test_generation_with_the_cache_equals_generation_without_it(kwargs):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=40, block_size=24, d_model=32, n_head=4, n_layer=3))
    init_gpt2_(model)
    prompt = torch.randint(0, 40, (3, 5))
    a = generate(model, prompt, 19, **kwargs, generator=torch.Generator().manual_seed(7))
    b = generate_cached(model, prompt, 19, **kwargs, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 24) and torch.equal(a, b)
    with pytest.raises(ValueError, match="block_size"):
        generate_cached(model, prompt, 20)


def test_read_safetensors_matches_the_safetensors_package(tmp_path):
    from safetensors.torch import save_file
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "c": torch.randn(5, dtype=torch.float64), "d": torch.randn(2, 2).to(torch.bfloat16),
               "e": torch.zeros(0, 3), "f": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    got = read_safetensors(tmp_path / "t.safetensors")
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_a_checkpoint_file_in_the_published_layout_loads(tmp_path):
    # the published model.safetensors: no "transformer.", no lm_head, a mask buffer per block
    from safetensors.torch import save_file
    kwargs = CONFIGS[1]
    hf = hf_model(3, **kwargs)
    T = kwargs["n_positions"]
    published = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
                 if k != "lm_head.weight"}
    published.update({f"h.{i}.attn.bias": torch.ones(T, T).tril()[None, None] for i in range(kwargs["n_layer"])})
    save_file(published, tmp_path / "model.safetensors")
    model = GPT(ours_for(kwargs)).eval()
    model.load_state_dict(from_hf_gpt2(read_safetensors(tmp_path / "model.safetensors")), strict=True)
    idx = torch.randint(0, kwargs["vocab_size"], (2, T))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_offline_the_gpt2_download_says_what_to_do(monkeypatch, tmp_path):
    asked = []

    def refuse(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("COURSE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError) as info:
        load_gpt2()
    message = str(info.value)
    for words in ("COURSE_DATA", GPT2_SMALL.file, GPT2_SMALL.url, GPT2_SMALL.sha256, "Temporary failure"):
        assert words in message, words
    assert asked == [GPT2_SMALL.url]
    assert list(cache_dir().glob("*")) == []                    # no .part left behind


def test_a_wrong_weights_file_in_course_data_is_refused(monkeypatch, tmp_path):
    (tmp_path / GPT2_SMALL.file).write_bytes(b"not a checkpoint")
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="SHA-256"):
        load_gpt2()
    assert (tmp_path / GPT2_SMALL.file).read_bytes() == b"not a checkpoint"   # reported, not replaced


def test_the_course_model_never_imports_transformers():
    source = (course.SOLUTIONS / "ch07_gpt.py").read_text()
    assert "transformers" not in source
    code = "import sys, solutions.ch07_gpt; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
