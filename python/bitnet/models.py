"""Random BitNet b1.58 models for demos, tests and benchmarks (no downloads).

:func:`make_random_model` writes a seeded random model in the Hugging Face packed format of
microsoft/bitnet-b1.58-2B-4T to a temporary checkpoint and converts it with
:func:`bitnet.convert.convert_hf_to_gguf`, so the file is exactly what the converter makes
of a real checkpoint, just with random weights.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

__all__ = ["PRESETS", "make_random_model", "random_hf_checkpoint"]

#: Model shapes. ``2b-4t`` is the shape of microsoft/bitnet-b1.58-2B-4T.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024),
    "medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    # the shape of 1bitLLM/bitnet_b1_58-large (~700M), with 2B-4T's graph (relu2, sub-norms)
    "700m": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32002, max_position_embeddings=2048),
    "2b-4t": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                  num_key_value_heads=5, vocab_size=128256, max_position_embeddings=4096),
}


def _pack_rows(t: np.ndarray) -> np.ndarray:
    """Pack ternary codes [out, in] into HF's uint8 [ceil(out/4), in] (rows p + i*R at bits 2i)."""
    out, k = t.shape
    r = (out + 3) // 4
    codes = np.ones((4 * r, k), dtype=np.uint8)       # padding rows hold t = 0
    codes[:out] = (t + 1).astype(np.uint8)
    packed = np.zeros((r, k), dtype=np.uint8)
    for i in range(4):
        packed |= codes[i * r:(i + 1) * r] << (2 * i)
    return packed


def _byte_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE alphabets)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _tokenizer_json(vocab_size: int) -> Dict[str, Any]:
    """A small byte-level BPE tokenizer: the 256 bytes plus two-character merges, so that tools
    which need a vocabulary (llama.cpp) load the random model. Unused ids stay unfilled."""
    chars = _byte_unicode()
    vocab = {chars[b]: b for b in range(256)}
    merges = []
    letters = [chars[b] for b in range(ord("a"), ord("z") + 1)]
    for a in letters:
        for b in letters:
            if len(vocab) >= min(vocab_size, 256 + 26 * 26):
                break
            merges.append(f"{a} {b}")
            vocab[a + b] = len(vocab)
    return {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                      "byte_fallback": False, "vocab": vocab, "merges": merges}}


def random_hf_checkpoint(directory: Union[str, os.PathLike], preset: str = "small", seed: int = 0,
                         **overrides: Any) -> Path:
    """Write a seeded random BitNet checkpoint (packed 2B-4T format, fp32 norms/embedding)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    from safetensors.numpy import save_file

    cfg = dict(PRESETS[preset])
    cfg.update(overrides)
    d, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    hd = d // heads
    rng = np.random.default_rng(seed)
    config = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": d, "intermediate_size": f, "num_hidden_layers": n_layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
        "max_position_embeddings": cfg["max_position_embeddings"], "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }
    tensors: Dict[str, np.ndarray] = {
        # Embedding std 4/sqrt(d): layer outputs dominate the residual stream and the tied head
        # gives logits with a spread of a few units, as in a trained model.
        "model.embed_tokens.weight": rng.standard_normal((vocab, d), dtype=np.float32) * np.float32(4.0 / np.sqrt(d)),
        "model.norm.weight": (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32),
    }
    projs = {"self_attn.q_proj": (heads * hd, d), "self_attn.k_proj": (kv * hd, d),
             "self_attn.v_proj": (kv * hd, d), "self_attn.o_proj": (d, heads * hd),
             "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)}
    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        for name, size in (("input_layernorm", d), ("post_attention_layernorm", d),
                           ("self_attn.attn_sub_norm", heads * hd), ("mlp.ffn_sub_norm", f)):
            tensors[p + name + ".weight"] = (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)
        for name, (o, i) in projs.items():
            t = rng.integers(-1, 2, size=(o, i), dtype=np.int8)
            tensors[p + name + ".weight"] = _pack_rows(t)
            # A scale near 1/sqrt(in * 2/3) keeps activations O(1) through the layers.
            beta = np.float32(rng.uniform(0.8, 1.2) / np.sqrt(i * 2.0 / 3.0))
            tensors[p + name + ".weight_scale"] = np.array([beta], dtype=np.float32)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if vocab >= 256:
        (out / "tokenizer.json").write_text(json.dumps(_tokenizer_json(vocab)))
    save_file(tensors, str(out / "model.safetensors"))
    return out


def make_random_model(path: Union[str, os.PathLike], preset: str = "small", seed: int = 0, type: str = "tq2_0",
                      embed_type: str = "f16", **overrides: Any) -> Path:
    """Write a seeded random BitNet b1.58 GGUF model to ``path`` and return the path.

    ``preset`` picks the shape (:data:`PRESETS`); keyword overrides change single config
    values (``num_hidden_layers=2`` ...). ``type`` and ``embed_type`` are the converter's.
    """
    from .convert import convert_hf_to_gguf

    with tempfile.TemporaryDirectory(prefix="bitnet-random-") as tmp:
        ckpt = random_hf_checkpoint(tmp, preset=preset, seed=seed, **overrides)
        return Path(convert_hf_to_gguf(ckpt, path, type=type, embed_type=embed_type))
