"""BitNetForCausalLM / BitNetModule: Hugging Face parity of logits and greedy generation on the
tiny BitNet checkpoints, HF-style batching and padding, the conversion cache, and errors.

Logits and greedy tokens are compared exactly as tests/test_parity.py compares the engine with
transformers (read its docstring): a 1-token prompt must be within 1e-3 outright; longer prompts
must be explained by the float64 oracle up to activation codes within rounding distance of a
tie; greedy tokens must equal HF's or diverge only on such a near-tie.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_models as hm  # noqa: E402
from test_parity import N_NEW, PROMPTS, _check_greedy, _check_logits, _oracle  # noqa: E402

import bitnet  # noqa: E402
from bitnet import BitNet, BitNetError  # noqa: E402
from bitnet.torch_api import BitNetForCausalLM, BitNetModule, CausalLMOutput, resolve_model_file  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bitnet-cache")


@pytest.fixture(scope="module")
def lm(ckpt, cache_dir):
    """``lm(name)``: BitNetForCausalLM.from_pretrained(HF checkpoint directory) on sim (cached)."""
    made = {}

    def get(name: str) -> BitNetForCausalLM:
        if name not in made:
            made[name] = BitNetForCausalLM.from_pretrained(ckpt(name), device="sim", cache_dir=cache_dir)
        return made[name]

    yield get
    for m in made.values():
        m.close()


def _report(record_property, label: str, note: str) -> None:
    line = f"TORCH-HF {label}: {note}"
    print(line)
    record_property("torch_hf", line)


# ---------------------------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("model", ["gqa64", "mha128"])
def test_logits_match_transformers(ckpt, lm, model, prompt, record_property):
    ids = PROMPTS[prompt]
    d = ckpt(model)
    hf_logits, _ = hm.hf_reference(d, ids, N_NEW)
    out = lm(model)(torch.tensor([ids]))
    assert isinstance(out, CausalLMOutput)
    logits = out.logits
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (1, len(ids), 512)
    note = _check_logits(f"{model}/{prompt}", logits[0].numpy(), ids, 512, _oracle(d), hf_logits)
    _report(record_property, f"logits {model}/{prompt}", note)


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("model", ["gqa64", "mha128"])
def test_generate_matches_transformers_greedy(ckpt, lm, model, prompt, record_property):
    ids = PROMPTS[prompt]
    d = ckpt(model)
    _, hf_tokens = hm.hf_reference(d, ids, N_NEW)
    m = lm(model)
    out = m.generate(torch.tensor([ids]), max_new_tokens=N_NEW, eos_token_id=[])
    assert out.dtype == torch.long and tuple(out.shape) == (1, len(ids) + N_NEW)
    assert out[0, :len(ids)].tolist() == ids
    new = out[0, len(ids):].numpy().astype(np.int32)
    note = _check_greedy(f"{model}/{prompt}", m.model_path, ids, new, hf_tokens, _oracle(d))
    _report(record_property, f"generate {model}/{prompt}", note)


def test_left_padded_batch_matches_transformers(ckpt, lm, record_property):
    """A left-padded batch (the HF convention) through generate and forward, against
    transformers given the same batch and attention mask."""
    d = ckpt("gqa64")
    m = lm("gqa64")
    hf = hm._load_hf_model(d)
    rng = np.random.default_rng(5)
    prompts = [PROMPTS["p1"], [hm.BOS_ID] + rng.integers(3, 512, 6).tolist(), PROMPTS["p121"][:40]]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), hm.PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        hf_out = hf.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                             num_beams=1, eos_token_id=None, pad_token_id=hm.PAD_ID)
        hf_logits = hf(ids, attention_mask=mask).logits.numpy()
    ours = m.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, eos_token_id=[])
    logits = m(ids, attention_mask=mask).logits.numpy()
    assert tuple(ours.shape) == tuple(hf_out.shape) == (3, width + N_NEW)
    assert torch.equal(ours[:, :width], ids)
    notes = []
    for i, p in enumerate(prompts):
        start = width - len(p)
        assert not logits[i, :start].any(), "padding positions must hold zeros"
        _check_logits(f"row {i}", logits[i, start:], p, 512, _oracle(d),
                      hf_logits[i, start:] if len(p) == 1 else None)
        new = ours[i, width:].numpy().astype(np.int32)
        notes.append(_check_greedy(f"row {i}", m.model_path, p, new, hf_out[i, width:].tolist(), _oracle(d)))
        # each row of the batch is exactly that prompt run alone
        alone = m.generate(torch.tensor(p), max_new_tokens=N_NEW, eos_token_id=[])
        assert alone[len(p):].tolist() == new.tolist()
    _report(record_property, "left-padded batch", "; ".join(notes))


def test_eos_and_padding_like_transformers(ckpt, lm):
    """With an EOS that occurs in the continuation, generation stops there and finished rows
    are padded with pad_token_id, exactly as transformers does."""
    d = ckpt("gqa64")
    m = lm("gqa64")
    hf = hm._load_hf_model(d)
    ids = PROMPTS["p1"]
    _, cont = hm.hf_reference(d, ids, N_NEW)
    eos = cont[4]
    stop_at = cont.index(eos)
    batch = torch.tensor([ids, [hm.BOS_ID]])
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, 1, dtype=torch.long), max_new_tokens=20,
                           do_sample=False, eos_token_id=eos, pad_token_id=7)
    got = m.generate(torch.tensor([ids]), max_new_tokens=20, eos_token_id=eos, pad_token_id=7)
    assert got.tolist() == want.tolist()
    assert got.shape[1] == len(ids) + stop_at + 1 and int(got[0, -1]) == eos
    # a batch: the row that stops early is padded up to the longer one
    other = m.generate(batch, max_new_tokens=20, eos_token_id=[eos, 511], pad_token_id=7)
    assert other[0, 1:2 + stop_at].tolist() == cont[:stop_at + 1]
    assert set(other[0, 2 + stop_at:].tolist()) <= {7}
    # pad defaults to the (first) EOS id, as in transformers
    dflt = m.generate(batch, max_new_tokens=20, eos_token_id=eos)
    assert set(dflt[0, 2 + stop_at:].tolist()) <= {eos}


# ---------------------------------------------------------------------------------------------
# the conversion cache
# ---------------------------------------------------------------------------------------------

def test_hf_directory_is_converted_once_and_cached(ckpt, tmp_path, monkeypatch):
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(ckpt("gqa64"), src)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BITNET_CACHE_DIR", str(cache))
    p1 = resolve_model_file(src)
    assert p1.parent == cache / "converted" and p1.name.startswith("ckpt-tq2_0-f16-") and p1.is_file()
    mtime = p1.stat().st_mtime_ns
    time.sleep(0.01)
    with BitNetModule(device="sim", model_path=src) as mod:   # default cache location: $BITNET_CACHE_DIR
        assert mod.model_path == p1
    assert p1.stat().st_mtime_ns == mtime, "a cached conversion must not be rewritten"
    assert resolve_model_file(src, type="i2_s") != p1
    # touching the checkpoint invalidates the cache entry
    cfg = src / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))
    p2 = resolve_model_file(src)
    assert p2 != p1 and p2.is_file()
    assert sorted(x.name for x in (cache / "converted").iterdir() if "partial" in x.name) == []
    # a GGUF file is used as is
    assert resolve_model_file(p2) == p2


def test_auto_type_for_small_shapes(tmp_path, cache_dir):
    d = hm.make_packed_checkpoint(tmp_path / "small", seed=3, hidden_size=128, intermediate_size=384, num_layers=1,
                                  num_heads=2, num_kv_heads=1, vocab_size=64)
    assert resolve_model_file(d, cache_dir=cache_dir).name.startswith("small-i2_s-")
    d2 = hm.make_packed_checkpoint(tmp_path / "odd", seed=3, hidden_size=96, intermediate_size=160, num_layers=1,
                                   num_heads=2, num_kv_heads=1, vocab_size=64)
    path = resolve_model_file(d2, cache_dir=cache_dir)
    assert path.name.startswith("odd-f16-")
    m = BitNetForCausalLM.from_pretrained(d2, device="sim", cache_dir=cache_dir)
    assert m(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)
    m.close()


# ---------------------------------------------------------------------------------------------
# the seed API on a GGUF file: batching, padding, sampling
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_model(gguf_file):
    return gguf_file("gqa64", "tq2_0")


@pytest.fixture(scope="module")
def module(gguf_model):
    with BitNetModule(device="sim", model_path=gguf_model) as mod:
        yield mod


def test_module_forward_is_batched_generation(module, gguf_model):
    batch = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]], dtype=np.int64)
    want = bitnet.bitnet_batch_inference(batch, gguf_model, device="sim", pad_token_id=0, max_output=12)
    right = module(torch.from_numpy(batch), max_length=12, attention_mask=torch.from_numpy((batch != 0).astype(np.int64)))
    assert right.dtype == torch.long and right.tolist() == want.tolist()
    left = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    assert module(left, max_length=12, attention_mask=left != 0).tolist() == want.tolist()
    # without a mask every id is a token; 1-D input gives 1-D output
    with BitNet("sim") as bn:
        bn.load_weights(gguf_model)
        solo = bn.inference([4, 5, 6, 7, 8], 12)
        padded_as_tokens = bn.inference([1, 2, 3, 0, 0], 12)
    assert module(torch.tensor([4, 5, 6, 7, 8]), max_length=12).tolist() == solo.tolist()
    no_mask = module(torch.from_numpy(batch), max_length=12)
    assert no_mask[0, :len(padded_as_tokens)].tolist() == padded_as_tokens.tolist()
    assert module(torch.tensor([[4, 5]]), max_length=0).shape == (1, 0)


def test_forward_logits_with_padding(module, gguf_model):
    lm = BitNetForCausalLM.from_pretrained(gguf_model, device="sim")
    a, b = [1, 9, 4, 33, 7], [1, 2]
    with BitNet("sim") as bn:
        bn.load_weights(gguf_model)
        la, lb = bn.logits(a), bn.logits(b)
    left = lm(torch.tensor([a, [0, 0, 0] + b]), attention_mask=torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])).logits
    right = lm(torch.tensor([a, b + [0, 0, 0]]), attention_mask=torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])).logits
    assert np.array_equal(left[0].numpy(), la) and np.array_equal(left[1, 3:].numpy(), lb)
    assert np.array_equal(right[1, :2].numpy(), lb) and not right[1, 2:].any()
    out = lm(torch.tensor(a), labels=torch.tensor(a))
    assert out.logits.shape == (5, 512)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(la[:-1]), torch.tensor(a[1:]))
    assert torch.allclose(out.loss, want) and out[0] is out.loss and out["logits"] is out.logits
    lm.close()


def test_sampling(module):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    s1 = module.generate(ids, max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, seed=3, eos_token_id=[])
    s2 = module.generate(ids, max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, seed=3, eos_token_id=[])
    greedy = module.generate(ids, max_new_tokens=16, eos_token_id=[])
    assert torch.equal(s1, s2) and not torch.equal(s1, greedy)
    top1 = module.generate(ids, max_new_tokens=16, do_sample=True, top_k=1, seed=9, eos_token_id=[])
    assert torch.equal(top1, greedy)
    # do_sample=False ignores the sampling knobs (as transformers does)
    assert torch.equal(module.generate(ids, max_new_tokens=16, temperature=3.0, top_p=0.5, eos_token_id=[]), greedy)
    # the seed of forward()'s sampling matches bitnet_batch_inference: row i uses seed + i
    fwd = module(ids, max_length=16, temperature=1.5, top_k=50, seed=3, stop_token_ids=[])
    assert torch.equal(fwd, s1[:, 3:])


def test_fast_head_gives_the_same_tokens(gguf_model):
    with BitNetForCausalLM.from_pretrained(gguf_model, device="sim") as a, \
            BitNetForCausalLM.from_pretrained(gguf_model, device="sim", fast_head=True) as b:
        ids = torch.tensor([PROMPTS["p121"][:30]])
        assert torch.equal(a.generate(ids, max_new_tokens=24, eos_token_id=[]),
                           b.generate(ids, max_new_tokens=24, eos_token_id=[]))
        assert b.config.vocab_size == 512 and b.config.num_kv_heads == 2


def test_bad_arguments(module, gguf_model, tmp_path):
    with pytest.raises(TypeError, match="input_ids"):
        module(torch.ones(1, 3))
    with pytest.raises(TypeError, match="input_ids"):
        module.generate("1 2 3")
    with pytest.raises(ValueError, match="input_ids"):
        module(torch.ones(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="negative"):
        module(torch.tensor([[1, -2]]))
    with pytest.raises(ValueError, match="attention_mask"):
        module(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        module(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="all zeros"):
        module(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 0, 0]]))
    with pytest.raises(TypeError, match="max_length"):
        module(torch.tensor([[1, 2]]), max_length=2.5)
    with pytest.raises(ValueError, match="temperature"):
        module.generate(torch.tensor([[1]]), do_sample=True, temperature=0.0)
    with pytest.raises(TypeError, match="unsupported"):
        module.generate(torch.tensor([[1]]), num_beams=4)
    with pytest.raises(ValueError, match="top_p"):
        module.generate(torch.tensor([[1]]), do_sample=True, top_p=0.0)
    with pytest.raises(FileNotFoundError):
        BitNetForCausalLM.from_pretrained(tmp_path / "missing", device="sim")
    with pytest.raises(BitNetError):
        BitNetForCausalLM.from_pretrained(tmp_path, device="sim")        # a directory with no checkpoint
    closed = BitNetModule(device="sim", model_path=gguf_model)
    closed.close()
    with pytest.raises(BitNetError, match="closed"):
        closed.generate(torch.tensor([[1]]))
    empty = BitNetModule(device="sim")
    with pytest.raises(BitNetError, match="no model"):
        empty(torch.tensor([[1]]))
    empty.close()
