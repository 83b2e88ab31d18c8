"""Tests of bitnet.convert (Hugging Face checkpoint -> GGUF). No C++ engine needed.

Each output is read back with gguf.GGUFReader (plus a small I2_S-aware subclass) and compared
with an independent view of the checkpoint: transformers' own unpack_weights for packed codes,
HF's WeightQuant formula for master weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("safetensors")

import hf_models as hm  # noqa: E402
from bitnet.convert import (  # noqa: E402
    EMBED_TYPES,
    OUTPUT_TYPES,
    convert_hf_to_gguf,
    encode_i2s,
    main,
    ternarise_absmean,
    unpack_hf_weights,
)
from bitnet.errors import (  # noqa: E402
    BitNetError,
    BitNetFileNotFoundError,
    BitNetFormatError,
    BitNetValueError,
    ErrorCode,
)

Q = gguf.GGMLQuantizationType
PROJ_STEMS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_STEMS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")
HF_OF = {v: k for k, v in hm.PROJECTIONS.items()}
EXPECTED_TYPE = {"tq2_0": int(Q.TQ2_0), "tq1_0": int(Q.TQ1_0), "f16": int(Q.F16), "i2_s": hm.I2S_TYPE_ID}
EXPECTED_FTYPE = {"f16": 1, "tq1_0": 36, "tq2_0": 37, "i2_s": 40}


def _tensors(reader):
    return {t.name: t for t in reader.tensors}


def _ggml_shape(t):
    return [int(d) for d in t.shape]


# ---------------------------------------------------------------------------------------------
# metadata, names, shapes, types
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type", OUTPUT_TYPES)
def test_keys_names_shapes_types(gguf_file, ckpt, type):
    cfg = json.loads((ckpt("gqa64") / "config.json").read_text())
    r = hm.read_gguf(gguf_file("gqa64", type))
    kv = hm.gguf_kv(r)
    arch = "bitnet-b1.58" if type == "i2_s" else "bitnet"
    assert kv["general.architecture"] == arch
    assert kv["general.file_type"] == EXPECTED_FTYPE[type]
    assert kv["general.quantization_version"] == 2
    assert kv["general.name"] == "gqa64"
    expect = {
        "context_length": 512, "embedding_length": 256, "block_count": 2, "feed_forward_length": 512,
        "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 64,
        "vocab_size": 512, "hidden_activation": "relu2",
    }
    for k, v in expect.items():
        assert kv[f"{arch}.{k}"] == v, k
    assert kv[f"{arch}.rope.freq_base"] == pytest.approx(10000.0)
    assert kv[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert kv["tokenizer.ggml.bos_token_id"] == hm.BOS_ID
    assert kv["tokenizer.ggml.eos_token_id"] == hm.EOS_ID
    assert kv["tokenizer.ggml.padding_token_id"] == hm.PAD_ID
    assert json.loads(kv["bitnet_pkg.hf_config_json"]) == cfg
    assert kv["bitnet_pkg.weight_source"] == "packed-autobitlinear"

    tensors = _tensors(r)
    names = {"token_embd.weight", "output_norm.weight"}
    for i in range(2):
        names |= {f"blk.{i}.{s}.weight" for s in PROJ_STEMS + NORM_STEMS}
    # packed autobitlinear scales are bf16, hence exact in fp16: no .scale tensors needed
    assert set(tensors) == names
    assert "output.weight" not in tensors

    hd = 64
    shapes = {"attn_q": [256, 4 * hd], "attn_k": [256, 2 * hd], "attn_v": [256, 2 * hd],
              "attn_output": [4 * hd, 256], "ffn_gate": [256, 512], "ffn_up": [256, 512], "ffn_down": [512, 256],
              "attn_norm": [256], "attn_sub_norm": [256], "ffn_norm": [256], "ffn_sub_norm": [512]}
    for i in range(2):
        for stem, shape in shapes.items():
            t = tensors[f"blk.{i}.{stem}.weight"]
            assert _ggml_shape(t) == shape, (stem, _ggml_shape(t))
            want = int(Q.F32) if stem in NORM_STEMS else EXPECTED_TYPE[type]
            assert int(t.tensor_type) == want, stem
    assert _ggml_shape(tensors["token_embd.weight"]) == [256, 512]
    assert int(tensors["token_embd.weight"].tensor_type) == int(Q.F16)
    assert _ggml_shape(tensors["output_norm.weight"]) == [256]
    assert int(tensors["output_norm.weight"].tensor_type) == int(Q.F32)


def test_i2s_tensor_bytes_and_alignment(gguf_file):
    r = hm.read_gguf(gguf_file("gqa64", "i2_s"))
    for t in r.tensors:
        assert t.data_offset % 32 == 0, t.name
        if int(t.tensor_type) == hm.I2S_TYPE_ID:
            assert t.n_bytes == t.n_elements // 4 + 32


# ---------------------------------------------------------------------------------------------
# ternary tensors decode to exactly the checkpoint's t * beta
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gqa64", "mha128", "bitlinear", "master"])
@pytest.mark.parametrize("type", OUTPUT_TYPES)
def test_ternary_roundtrip_exact(gguf_file, ckpt, model, type):
    ref = hm.hf_unpacked_weights(ckpt(model))
    r = hm.read_gguf(gguf_file(model, type))
    n_layers = 2
    for i in range(n_layers):
        for stem in PROJ_STEMS:
            t, beta = ref[f"model.layers.{i}.{HF_OF[stem]}"]
            want = t.astype(np.float32) * np.float32(beta)
            got = hm.effective_weight(r, f"blk.{i}.{stem}.weight")
            assert got.shape == want.shape
            assert np.array_equal(got, want), f"{model}/{type}: blk.{i}.{stem} differs (max {np.abs(got - want).max()})"


@pytest.mark.parametrize("type", ["tq2_0", "tq1_0", "f16"])
def test_scale_tensor_rule(gguf_file, ckpt, type):
    """A .scale tensor appears exactly when beta is not representable in fp16; then the codes
    carry d = 1 and the F32 scale holds beta."""
    ref = hm.hf_unpacked_weights(ckpt("bitlinear"))
    r = hm.read_gguf(gguf_file("bitlinear", type))
    tensors = _tensors(r)
    n_scaled = 0
    for i in range(2):
        for stem in PROJ_STEMS:
            _, beta = ref[f"model.layers.{i}.{HF_OF[stem]}"]
            exact = float(np.float32(np.float16(beta))) == beta
            sc = tensors.get(f"blk.{i}.{stem}.scale")
            assert (sc is None) == exact
            if sc is None:
                continue
            n_scaled += 1
            assert int(sc.tensor_type) == int(Q.F32) and _ggml_shape(sc) == [1]
            assert float(np.asarray(sc.data)[0]) == beta
            w = tensors[f"blk.{i}.{stem}.weight"]
            raw = gguf.quants.dequantize(np.asarray(w.data), Q(int(w.tensor_type)))
            assert set(np.unique(raw).tolist()) <= {-1.0, 0.0, 1.0}
    assert n_scaled > 0, "1/weight_scale of bitlinear checkpoints is generally not fp16-exact"


@pytest.mark.parametrize("type", ["tq2_0", "tq1_0"])
def test_tq_blocks_share_one_scale(gguf_file, type):
    r = hm.read_gguf(gguf_file("gqa64", type))
    qt = Q.TQ2_0 if type == "tq2_0" else Q.TQ1_0
    bsize = gguf.GGML_QUANT_SIZES[qt][1]
    for t in r.tensors:
        if int(t.tensor_type) != int(qt):
            continue
        d = np.asarray(t.data).reshape(-1, bsize)[:, -2:].copy().view(np.float16).reshape(-1)
        assert np.unique(d).size == 1, t.name


def test_master_weights_follow_absmean(ckpt, gguf_file):
    """Master weights: beta = max(mean|W|, 1e-5), t = round_half_even(W/beta), as HF's
    WeightQuant (whose online-mode output the parity tests compare against end to end)."""
    import torch
    from safetensors.torch import load_file

    raw = load_file(str(ckpt("master") / "model.safetensors"))
    r = hm.read_gguf(gguf_file("master", "f16"))
    assert hm.gguf_kv(r)["bitnet_pkg.weight_source"] == "master"
    for name, stem in (("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up"),
                       ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k")):
        wf = raw[name].to(torch.float32).numpy()
        beta = np.float32(np.abs(wf.astype(np.float64)).mean())
        t = np.clip(np.rint(wf / beta), -1, 1)
        ours = hm.effective_weight(r, stem + ".weight")
        assert np.array_equal(ours, (t * beta).astype(np.float32))
        assert stem + ".scale" in _tensors(r)        # a float32 mean is not fp16-exact


def test_sharded_checkpoint_equals_single_file(gguf_file):
    a = hm.read_gguf(gguf_file("gqa64", "tq2_0"))
    b = hm.read_gguf(gguf_file("sharded", "tq2_0"))
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert np.array_equal(np.asarray(ta[name].data), np.asarray(tb[name].data)), name


# ---------------------------------------------------------------------------------------------
# float tensors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("embed_type", EMBED_TYPES)
def test_embedding_types(gguf_file, ckpt, embed_type):
    from safetensors.torch import load_file
    import torch

    emb = load_file(str(ckpt("gqa64") / "model.safetensors"))["model.embed_tokens.weight"].to(torch.float32).numpy()
    r = hm.read_gguf(gguf_file("gqa64", "tq2_0", embed_type))
    t = _tensors(r)["token_embd.weight"]
    qt = {"f16": Q.F16, "f32": Q.F32, "bf16": Q.BF16, "q8_0": Q.Q8_0}[embed_type]
    assert int(t.tensor_type) == int(qt)
    got = gguf.quants.dequantize(np.asarray(t.data), qt).reshape(emb.shape)
    if embed_type in ("f32", "bf16"):
        assert np.array_equal(got, emb)          # bf16 source values: exact
    elif embed_type == "f16":
        assert np.allclose(got, emb, rtol=2 ** -11, atol=2 ** -24)
    else:
        assert np.abs(got - emb).max() <= np.abs(emb).max() / 127 + 1e-6


def test_norms_are_exact_f32(gguf_file, ckpt):
    from safetensors.torch import load_file
    import torch

    raw = load_file(str(ckpt("mha128") / "model.safetensors"))
    r = hm.read_gguf(gguf_file("mha128", "i2_s"))
    t = _tensors(r)
    pairs = {"output_norm.weight": "model.norm.weight",
             "blk.1.attn_norm.weight": "model.layers.1.input_layernorm.weight",
             "blk.1.attn_sub_norm.weight": "model.layers.1.self_attn.attn_sub_norm.weight",
             "blk.1.ffn_norm.weight": "model.layers.1.post_attention_layernorm.weight",
             "blk.1.ffn_sub_norm.weight": "model.layers.1.mlp.ffn_sub_norm.weight"}
    for g, h in pairs.items():
        assert np.array_equal(np.asarray(t[g].data), raw[h].to(torch.float32).numpy()), g


# ---------------------------------------------------------------------------------------------
# low-level encoders against hand-computed layouts and transformers
# ---------------------------------------------------------------------------------------------

def test_unpack_matches_transformers():
    import torch
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    rng = np.random.default_rng(0)
    for n_out in (8, 10, 13):
        t = rng.integers(-1, 2, size=(n_out, 6))
        packed = pack_weights(torch.from_numpy(t.copy()))
        ours = unpack_hf_weights(packed.numpy(), n_out)
        theirs = unpack_weights(packed, dtype=torch.float32).numpy()[:n_out]
        assert np.array_equal(ours, t) and np.array_equal(ours, theirs)


def test_i2s_golden_layout():
    # one row of 256 = two 128-blocks; element e has code c(e) = (e % 3), i.e. t = e % 3 - 1
    e = np.arange(256)
    t = (e % 3 - 1).astype(np.int8).reshape(1, 256)
    raw = encode_i2s(t, 0.75)
    assert raw.dtype == np.uint8 and raw.size == 256 // 4 + 32
    for b in range(2):
        for j in range(32):
            base = 128 * b + j
            want = ((base % 3) << 6) | (((base + 32) % 3) << 4) | (((base + 64) % 3) << 2) | ((base + 96) % 3)
            assert raw[32 * b + j] == want, (b, j)
    assert raw[64:68].view("<f4")[0] == np.float32(0.75)
    assert not raw[68:].any()


def test_ternarise_absmean_rules():
    w = np.array([[0.5, -0.25, 0.0, 1.0], [-0.75, 0.125, 0.3, -2.0]], dtype=np.float32)
    t, beta = ternarise_absmean(w)
    assert beta == np.float32(np.abs(w.astype(np.float64)).mean())
    assert np.array_equal(t, np.clip(np.rint(w / np.float32(beta)), -1, 1))
    t0, beta0 = ternarise_absmean(np.zeros((2, 4), np.float32))
    assert beta0 == np.float32(1e-5) and not t0.any()


# ---------------------------------------------------------------------------------------------
# the upstream-style helper used by the parity tests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type", ["tq2_0", "tq1_0", "f16"])
def test_upstream_style_file(upstream_gguf, ckpt, type):
    r = hm.read_gguf(upstream_gguf("gqa64", type))
    kv = hm.gguf_kv(r)
    assert kv["general.architecture"] == "bitnet"
    assert kv["general.file_type"] == EXPECTED_FTYPE[type]
    assert kv["bitnet.rope.scaling.type"] == "linear" and kv["bitnet.rope.scaling.factor"] == 1.0
    for absent in ("bitnet.hidden_activation", "bitnet.rope.dimension_count", "bitnet.vocab_size"):
        assert absent not in kv
    ref = hm.hf_unpacked_weights(ckpt("gqa64"))
    for stem in PROJ_STEMS:
        t, beta = ref[f"model.layers.0.{HF_OF[stem]}"]
        assert np.array_equal(hm.effective_weight(r, f"blk.0.{stem}.weight"), t.astype(np.float32) * np.float32(beta))
    assert not any(n.endswith(".scale") for n in _tensors(r))
    r2 = hm.read_gguf(upstream_gguf("gqa64", type, hidden_act="relu2"))
    assert hm.gguf_kv(r2)["bitnet.hidden_activation"] == "relu2"


# ---------------------------------------------------------------------------------------------
# the files describe the same model: run them through the float64 oracle
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,type", [(m, t) for m in ("gqa64", "mha128") for t in OUTPUT_TYPES]
                         + [("master", "tq2_0"), ("bitlinear", "f16")])
def test_gguf_model_equals_checkpoint_model(ckpt, gguf_file, model, type):
    """Hyper-parameters read from the GGUF keys and weights decoded from its tensors give the same
    float64 forward as the HF checkpoint (so names, orientation, scales, rope, activation agree)."""
    import numpy_reference as nr

    prompt = [hm.BOS_ID, 7, 99, 3, 250, 511, 42, 42]
    from_ckpt = nr.forward(nr.load_hf_checkpoint(ckpt(model)), prompt)
    from_gguf = nr.forward(hm.numpy_weights_from_gguf(gguf_file(model, type)), prompt)
    # (f16 embedding rounding of tiny values and the f32 eps key: ~1e-7)
    assert np.abs(from_gguf - from_ckpt).max() <= 1e-6


def test_1bitllm_style_checkpoint(ckpt, tmp_path):
    """1bitLLM/bitnet_b1_58-*: 'BitnetForCausalLM', model_type llama, SiLU, fp16 latent weights,
    sub-norms named inner_attn_ln / ffn_layernorm, no quantization_config."""
    import torch

    d = _copy(ckpt, tmp_path, "master")
    _edit_config(d, architectures=["BitnetForCausalLM"], model_type="llama", hidden_act="silu",
                 quantization_config=None, torch_dtype="float16")

    def rename(t):
        for name in list(t):
            new = name.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace(
                "mlp.ffn_sub_norm", "mlp.ffn_layernorm")
            t[new] = t.pop(name).to(torch.float16)

    _edit_tensors(d, rename)
    r = hm.read_gguf(convert_hf_to_gguf(d, tmp_path / "1bit.gguf", type="f16"))
    kv = hm.gguf_kv(r)
    assert kv["bitnet.hidden_activation"] == "silu" and kv["bitnet_pkg.weight_source"] == "master"
    ref = hm.hf_unpacked_weights(d)
    t, beta = ref["model.layers.1.self_attn.o_proj"]
    assert np.array_equal(hm.effective_weight(r, "blk.1.attn_output.weight"), t.astype(np.float32) * np.float32(beta))
    assert "blk.1.attn_sub_norm.weight" in _tensors(r) and "blk.1.ffn_sub_norm.weight" in _tensors(r)


def test_upstream_style_model_defaults(ckpt, upstream_gguf):
    import numpy_reference as nr

    prompt = [hm.BOS_ID, 5, 6, 7]
    w = hm.numpy_weights_from_gguf(upstream_gguf("gqa64", "tq2_0"))
    assert w.act == "silu"                                   # no hidden_activation: SiLU, as upstream
    relu2 = nr.forward(nr.load_hf_checkpoint(ckpt("gqa64")), prompt)
    w.act = "relu2"
    assert np.abs(nr.forward(w, prompt) - relu2).max() <= 1e-6


# ---------------------------------------------------------------------------------------------
# tokenizer keys
# ---------------------------------------------------------------------------------------------

def test_tokenizer_keys(ckpt, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path / "tok"
    shutil.copytree(ckpt("gqa64"), d)
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "\u0120": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")]))
    tok.add_special_tokens(["<|begin_of_text|>"])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "chat_template": "{{ x }}"}))
    r = hm.read_gguf(convert_hf_to_gguf(d, tmp_path / "tok.gguf", type="f16"))
    kv = hm.gguf_kv(r)
    assert kv["tokenizer.ggml.model"] == "gpt2"
    toks = kv["tokenizer.ggml.tokens"]
    assert len(toks) == 512 and toks[:6] == ["a", "b", "c", "ab", "abc", "\u0120"]
    assert toks[6] == "<|begin_of_text|>" and toks[7] == "[PAD7]"
    types = kv["tokenizer.ggml.token_type"]
    assert types[0] == 1 and types[6] == 3 and types[7] == 5
    assert kv["tokenizer.ggml.merges"] == ["a b", "ab c"]
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.chat_template"] == "{{ x }}"
    # no Split pre-tokenizer and not the 128256-token LLaMA-3 vocabulary: GPT-2's split, under
    # llama.cpp's name for it ("gpt2" is not one: llama.cpp refuses to load the file)
    assert kv["tokenizer.ggml.pre"] == "gpt-2"


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------

def _copy(ckpt, tmp_path, name="gqa64") -> Path:
    d = tmp_path / "ck"
    shutil.copytree(ckpt(name), d)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    f = d / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _raises(exc_type, d, tmp_path, match, **kw):
    out = tmp_path / "out.gguf"
    with pytest.raises(exc_type, match=match) as info:
        convert_hf_to_gguf(d, out, **kw)
    assert isinstance(info.value, BitNetError)
    assert not out.exists() and not (tmp_path / "out.gguf.tmp").exists()
    return info.value


def test_missing_directory(tmp_path):
    err = _raises(BitNetFileNotFoundError, tmp_path / "nope", tmp_path, "does not exist")
    assert isinstance(err, FileNotFoundError) and err.code == ErrorCode.FILE


def test_missing_config(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path)
    (d / "config.json").unlink()
    err = _raises(BitNetFormatError, d, tmp_path, "config.json is missing")
    assert err.code == ErrorCode.FILE


def test_missing_weights(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path)
    (d / "model.safetensors").unlink()
    _raises(BitNetFormatError, d, tmp_path, r"no \*\.safetensors")


def test_missing_shard(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path, "sharded")
    (d / "model-00002-of-00003.safetensors").unlink()
    _raises(BitNetFormatError, d, tmp_path, "model-00002-of-00003.safetensors")


@pytest.mark.parametrize("bad", [{"type": "q4_0"}, {"embed_type": "q6_k"}])
def test_unknown_types(ckpt, tmp_path, bad):
    err = _raises(BitNetValueError, ckpt("gqa64"), tmp_path, "unknown", **bad)
    assert isinstance(err, ValueError) and err.code == ErrorCode.INVALID


def test_missing_tensor(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path)
    _edit_tensors(d, lambda t: t.pop("model.layers.1.mlp.down_proj.weight_scale"))
    _raises(BitNetFormatError, d, tmp_path, "model.layers.1.mlp.down_proj.weight_scale")
    d2 = tmp_path / "ck2"
    shutil.copytree(ckpt("gqa64"), d2)
    _edit_tensors(d2, lambda t: t.pop("model.layers.0.self_attn.attn_sub_norm.weight"))
    _raises(BitNetFormatError, d2, tmp_path, "model.layers.0.self_attn.attn_sub_norm.weight")


def test_shape_mismatch(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path)
    _edit_config(d, intermediate_size=768)
    _raises(BitNetFormatError, d, tmp_path, "expected")


def test_type_does_not_fit_shape(ckpt, tmp_path):
    d = tmp_path / "odd"
    hm.make_packed_checkpoint(d, seed=1, hidden_size=128, intermediate_size=384, num_layers=1,
                              num_heads=2, num_kv_heads=2, vocab_size=64)
    _raises(BitNetValueError, d, tmp_path, "multiple of 256", type="tq2_0")
    convert_hf_to_gguf(d, tmp_path / "ok.gguf", type="i2_s")      # 128 | 384: fine for I2_S
    (tmp_path / "ok.gguf").unlink()


@pytest.mark.parametrize("changes,match", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported 'architectures'"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LLaMA-type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "use_rms_norm": True}}, "use_rms_norm"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_bad_config(ckpt, tmp_path, changes, match):
    d = _copy(ckpt, tmp_path)
    _edit_config(d, **changes)
    _raises(BitNetFormatError, d, tmp_path, match)


def test_invalid_packed_code(ckpt, tmp_path):
    import torch

    d = _copy(ckpt, tmp_path)

    def poison(t):
        w = t["model.layers.0.self_attn.k_proj.weight"].clone()
        w[0, 0] = 0xFF
        t["model.layers.0.self_attn.k_proj.weight"] = w

    _edit_tensors(d, poison)
    _raises(BitNetFormatError, d, tmp_path, "code 3")
    d2 = tmp_path / "ck2"
    shutil.copytree(ckpt("gqa64"), d2)
    _edit_tensors(d2, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight_scale",
                                               torch.tensor([-1.0], dtype=torch.bfloat16)))
    _raises(BitNetFormatError, d2, tmp_path, "finite and > 0")


def test_unexpected_tensor(ckpt, tmp_path):
    import torch

    d = _copy(ckpt, tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                              torch.zeros(256, dtype=torch.bfloat16)))
    _raises(BitNetFormatError, d, tmp_path, "unexpected tensors")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def test_cli(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main([str(ckpt("gqa64")), "-o", str(out), "--type", "tq1_0", "--embed-type", "q8_0"]) == 0
    assert hm.gguf_kv(hm.read_gguf(out))["general.file_type"] == 36
    assert main([str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(ckpt("gqa64")), "--type", "q4_0"])
