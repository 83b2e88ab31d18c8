"""Tiny Hugging Face BitNet checkpoints and the transformers oracle, for tests.

What lives here:

* :func:`make_packed_checkpoint` writes a seeded, tiny checkpoint directory in the exact on-disk
  format of ``microsoft/bitnet-b1.58-2B-4T`` (``config.json`` + ``model.safetensors``; packed
  uint8 projections from ``transformers.integrations.bitnet.pack_weights`` plus a bf16
  ``<proj>.weight_scale`` of shape [1]). Variants: ``linear_class="bitlinear"`` stores
  ``1/beta`` (the HF1BitLLM / Falcon3 convention), ``master=True`` stores bf16 master weights
  (``quantization_mode: online``, no scales), ``shards=N`` splits the tensors over N files with
  a ``model.safetensors.index.json``.
* :func:`hf_reference` runs transformers as the numerical oracle exactly as REFERENCE.md
  section 8 prescribes (load in bf16, cast the module to fp32, greedy generate with a fixed
  number of new tokens) and caches results for the session.
* :func:`write_upstream_style_gguf` writes a GGUF the way llama.cpp's own ``BitnetModel``
  converter would (see the function docstring for the exact upstream facts mirrored).

Nothing here downloads anything: transformers runs with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__all__ = [
    "PROJECTIONS",
    "make_packed_checkpoint",
    "hf_reference",
    "hf_unpacked_weights",
    "write_upstream_style_gguf",
    "read_gguf",
    "gguf_kv",
    "decode_i2s",
    "effective_weight",
    "numpy_weights_from_gguf",
    "FakeDevice",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
]

# Token ids written into the tiny configs (the 2B-4T defaults 128000/128001 are outside a tiny
# vocabulary).
BOS_ID = 1
EOS_ID = 2
PAD_ID = 0

# Embedding std: small against the layer outputs (see _GAIN), so that a random tied model does
# not simply echo its input token; the tied head still gives logits several units wide.
EMBED_STD = 0.3

# HF module path -> (GGUF tensor stem, which dimension is "in": the projections' input size key)
PROJECTIONS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# Relative output gain of each projection (multiplies 1/sqrt(fan_in) to pick beta). The
# residual-writing projections (o, down) get a larger gain so that the layers, not the input
# embedding, dominate the residual stream; otherwise a random tied model just echoes its input
# token and greedy decoding is a constant.
_GAIN = {
    "self_attn.q_proj": 1.0,
    "self_attn.k_proj": 1.0,
    "self_attn.v_proj": 1.0,
    "self_attn.o_proj": 2.5,
    "mlp.gate_proj": 1.0,
    "mlp.up_proj": 1.0,
    "mlp.down_proj": 2.5,
}


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bf16 (ties to even), returned as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def _proj_shapes(hidden: int, inter: int, heads: int, kv_heads: int, head_dim: int) -> Dict[str, Tuple[int, int]]:
    """PyTorch [out, in] shapes of the seven projections."""
    return {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def make_packed_checkpoint(
    dir: os.PathLike | str,
    *,
    seed: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    linear_class: Optional[str] = "autobitlinear",
    dtype: str = "bf16",
    master: bool = False,
    shards: int = 1,
    rms_norm_eps: float = 1e-5,
) -> Path:
    """Write a tiny seeded BitNetForCausalLM checkpoint directory and return its path.

    Parameters
    ----------
    dir : path
        Output directory (created).
    seed : int
        Seed of every random tensor; the same arguments give byte-identical files.
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size : int
        Model shape. head_dim = hidden_size // num_heads.
    max_position_embeddings : int
    rope_theta : float
    linear_class : {"autobitlinear", "bitlinear", None}
        ``autobitlinear`` stores ``weight_scale = beta`` (the 2B-4T packed checkpoint);
        ``bitlinear`` stores ``weight_scale = 1/beta`` (HF1BitLLM convention); ``None`` omits
        ``linear_class`` from the config (transformers then defaults to ``bitlinear``).
    dtype : {"bf16", "f16", "f32"}
        Storage dtype of embeddings, norms, scales and master weights (``torch_dtype``).
    master : bool
        Store float master weights (``quantization_mode: online``, no ``weight_scale``)
        instead of packed uint8 codes.
    shards : int
        Number of safetensors files; >1 also writes ``model.safetensors.index.json``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    dtype_name = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")
    head_dim = hidden_size // num_heads
    rng = np.random.default_rng(seed)
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)

    def to_torch(a: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch_dtype)

    tensors: Dict[str, "torch.Tensor"] = {}
    # Embedding: std ~1 (the logits of the tied head are then several units wide).
    tensors["model.embed_tokens.weight"] = to_torch(rng.standard_normal((vocab_size, hidden_size)) * EMBED_STD)
    tensors["model.norm.weight"] = to_torch(rng.uniform(0.7, 1.3, hidden_size))
    shapes = _proj_shapes(hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim)
    for layer in range(num_layers):
        pre = f"model.layers.{layer}."
        tensors[pre + "input_layernorm.weight"] = to_torch(rng.uniform(0.7, 1.3, hidden_size))
        tensors[pre + "post_attention_layernorm.weight"] = to_torch(rng.uniform(0.7, 1.3, hidden_size))
        tensors[pre + "self_attn.attn_sub_norm.weight"] = to_torch(rng.uniform(0.7, 1.3, hidden_size))
        tensors[pre + "mlp.ffn_sub_norm.weight"] = to_torch(rng.uniform(0.7, 1.3, intermediate_size))
        for proj, (n_out, n_in) in shapes.items():
            # beta ~ gain/sqrt(fan_in * 2/3): a BitLinear output then has std ~gain for a unit-rms
            # input (about 2/3 of the codes are non-zero).
            beta = _GAIN[proj] * rng.uniform(0.6, 1.6) / np.sqrt(n_in * 2.0 / 3.0)
            if master:
                w = rng.standard_normal((n_out, n_in)) * beta * 1.25
                tensors[pre + proj + ".weight"] = to_torch(w)
                continue
            t = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n_out, n_in))
            packed = pack_weights(torch.from_numpy(t.astype(np.int64)).clone())
            tensors[pre + proj + ".weight"] = packed
            if linear_class == "autobitlinear":
                scale = np.array([beta], dtype=np.float32)
            else:
                scale = np.array([1.0 / beta], dtype=np.float32)
            tensors[pre + proj + ".weight_scale"] = to_torch(scale)

    qcfg: Dict[str, Any] = {"quant_method": "bitnet"}
    if linear_class is not None:
        qcfg["linear_class"] = linear_class
    qcfg["quantization_mode"] = "online" if master else "offline"
    config = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "hidden_act": "relu2",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": float(rope_theta),
        "tie_word_embeddings": True,
        "torch_dtype": dtype_name,
        "use_cache": True,
        "vocab_size": vocab_size,
        "quantization_config": qcfg,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        groups = [names[i::shards] for i in range(shards)]
        weight_map = {}
        total = 0
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in group}, str(out / fname), metadata={"format": "pt"})
            for n in group:
                weight_map[n] = fname
                total += tensors[n].numel() * tensors[n].element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------------
# Independent view of a checkpoint's effective ternary weights (test-side, torch-based; it does
# not share code with bitnet.convert so that the converter tests compare two implementations)
# ----------------------------------------------------------------------------------------------

def _load_all(ckpt_dir: Path) -> Dict[str, "Any"]:
    from safetensors.torch import load_file

    files = sorted(ckpt_dir.glob("*.safetensors"))
    out: Dict[str, Any] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def hf_unpacked_weights(ckpt_dir: os.PathLike | str) -> Dict[str, Tuple[np.ndarray, float]]:
    """Effective ternary weights of a checkpoint: ``{"model.layers.N.<proj>": (t int8 [out,in], beta)}``.

    Packed tensors are unpacked with ``transformers.integrations.bitnet.unpack_weights``; the
    scale meaning follows ``quantization_config.linear_class`` (autobitlinear multiplies,
    bitlinear / missing divides). Master weights are ternarised with HF's ``WeightQuant``
    formula in float64 (beta = max(mean|W|, 1e-5) rounded to fp32).
    """
    import torch
    from transformers.integrations.bitnet import unpack_weights

    ckpt_dir = Path(ckpt_dir)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    qcfg = cfg.get("quantization_config") or {}
    multiply = qcfg.get("linear_class", "bitlinear") == "autobitlinear"
    tensors = _load_all(ckpt_dir)
    out: Dict[str, Tuple[np.ndarray, float]] = {}
    for name, value in tensors.items():
        if not name.endswith(".weight"):
            continue
        stem = name[: -len(".weight")]
        if not any(stem.endswith(p) for p in PROJECTIONS):
            continue
        if value.dtype == torch.uint8:
            t = unpack_weights(value, dtype=torch.float32).numpy().astype(np.int8)
            ws = float(tensors[stem + ".weight_scale"].to(torch.float32).reshape(-1)[0])
            beta = ws if multiply else float(np.float32(1.0) / np.float32(ws))
        else:
            w = value.to(torch.float32).numpy().astype(np.float64)
            beta = float(np.float32(max(np.abs(w).mean(), 1e-5)))
            t = np.clip(np.rint(w / beta), -1, 1).astype(np.int8)
        out[stem] = (t, float(np.float32(beta)))
    return out


# ----------------------------------------------------------------------------------------------
# transformers as the oracle (REFERENCE.md section 8)
# ----------------------------------------------------------------------------------------------

_MODEL_CACHE: Dict[str, Any] = {}
_RESULT_CACHE: Dict[Tuple[str, Tuple[int, ...], int], Tuple[np.ndarray, List[int]]] = {}


def _load_hf_model(ckpt_dir: Path):
    key = str(Path(ckpt_dir).resolve())
    model = _MODEL_CACHE.get(key)
    if model is not None:
        return model
    import torch
    from transformers import BitNetForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = BitNetForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.bfloat16)
    # from_pretrained(dtype=float32) gives a mixed-dtype model and .float() is refused for
    # quantized models: cast the module tree directly (REFERENCE.md section 8).
    torch.nn.Module.to(model, torch.float32)
    model.eval()
    _MODEL_CACHE[key] = model
    return model


def hf_reference(
    ckpt_dir: os.PathLike | str, prompt_ids: Sequence[int], max_new_tokens: int
) -> Tuple[np.ndarray, List[int]]:
    """Logits of the prompt and greedy continuation from transformers, in fp32.

    Returns
    -------
    logits : np.ndarray, float32, shape [len(prompt_ids), vocab]
        One forward pass over the prompt from an empty cache.
    new_tokens : list of int
        Exactly ``max_new_tokens`` greedy tokens (no EOS stopping).

    Results are cached per (checkpoint, prompt, max_new_tokens) for the session.
    """
    key = (str(Path(ckpt_dir).resolve()), tuple(int(t) for t in prompt_ids), int(max_new_tokens))
    hit = _RESULT_CACHE.get(key)
    if hit is not None:
        return hit[0].copy(), list(hit[1])
    import torch

    model = _load_hf_model(Path(ckpt_dir))
    ids = torch.tensor([list(key[1])], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].to(torch.float32).numpy().copy()
        new_tokens: List[int] = []
        if max_new_tokens > 0:
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=None,
                pad_token_id=PAD_ID,
                use_cache=True,
            )
            new_tokens = [int(t) for t in out[0, ids.shape[1]:].tolist()]
    if len(new_tokens) != max_new_tokens:
        raise AssertionError(f"HF generated {len(new_tokens)} tokens, wanted {max_new_tokens}")
    _RESULT_CACHE[key] = (logits, new_tokens)
    return logits.copy(), list(new_tokens)


# ----------------------------------------------------------------------------------------------
# A GGUF written the way upstream llama.cpp's converter writes a BitNet model
# ----------------------------------------------------------------------------------------------

def write_upstream_style_gguf(
    ckpt_dir: os.PathLike | str,
    out_path: os.PathLike | str,
    type: str = "tq2_0",
    *,
    hidden_act: Optional[str] = None,
) -> Path:
    """Write ``ckpt_dir`` as llama.cpp's ``convert_hf_to_gguf.py --outtype {type}`` would.

    Mirrors the upstream ``BitnetModel`` (``conversion/bitnet.py``) on top of ``TextModel``:

    * arch ``bitnet``; keys ``block_count``, ``context_length``, ``embedding_length``,
      ``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv``,
      ``rope.freq_base``, ``attention.layer_norm_rms_epsilon``, ``general.file_type``
      (LlamaFileType: F16=1, TQ1_0=36, TQ2_0=37), ``rope.scaling.type = "linear"`` and
      ``rope.scaling.factor = 1.0`` (BitnetModel adds those two), ``general.name``,
      ``general.quantization_version``. Upstream writes **no** ``rope.dimension_count``, **no**
      ``vocab_size`` key and **no** ``hidden_activation``: a loader must default n_rot to
      head_dim, n_vocab to the embedding rows, and (like upstream) the FFN activation to SiLU.
      ``hidden_act="relu2"`` adds ``bitnet.hidden_activation`` (what microsoft/BitNet#603 and
      llama.cpp#26751 propose); the default ``None`` is the faithful file.
    * ternary projections: packed checkpoints become ``unpacked * weight_scale`` in fp32 (the
      packed-aware BitnetModel of the tetherto/qvac-fabric-llm.cpp fork; the ggml-org snapshot
      only registers ``BitnetForCausalLM`` and would re-ternarise floats). Master weights go
      through ``weight_quant``: ``(W * (1/s)).round().clamp(-1,1) / (1/s)`` in fp32, cast back
      to the checkpoint dtype (so beta is rounded to bf16 for bf16 masters).
    * tensor types: 1-D tensors and norms F32; ``token_embd`` F16 for f16/tq outtypes; the
      projections F16 or quantized with ``gguf.quants`` (TQ d = fp16 absmax of each 256-block;
      a QuantError falls back to F16). No ``.scale`` tensors, no q/k permutation.
    """
    import gguf
    import torch
    from transformers.integrations.bitnet import unpack_weights

    type = type.lower()
    qtypes = {
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "tq1_0": (gguf.GGMLQuantizationType.TQ1_0, gguf.LlamaFileType.MOSTLY_TQ1_0),
        "tq2_0": (gguf.GGMLQuantizationType.TQ2_0, gguf.LlamaFileType.MOSTLY_TQ2_0),
    }
    if type not in qtypes:
        raise ValueError(f"upstream convert_hf_to_gguf.py has no outtype {type!r} for bitnet")
    qtype, ftype = qtypes[type]
    ckpt_dir = Path(ckpt_dir)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    tensors = _load_all(ckpt_dir)
    n_layers = cfg["num_hidden_layers"]

    w = gguf.GGUFWriter(str(out_path), "bitnet")
    w.add_name(ckpt_dir.name)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(int(ftype))
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(1.0)
    if hidden_act is not None:
        w.add_string("bitnet.hidden_activation", hidden_act)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, n_layers)

    ternary_keys = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name, value in tensors.items():
        if name.endswith(".weight_scale"):
            continue
        # gguf-py's map (0.19) knows the 1bitLLM sub-norm names inner_attn_ln/ffn_layernorm but not
        # the 2B-4T ones; both map to the same GGUF tensors.
        alias = name.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace(
            "mlp.ffn_sub_norm", "mlp.ffn_layernorm")
        new_name = tmap.get_name(alias, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map {name}")
        stem = name[: -len(".weight")]
        if value.dtype == torch.uint8:
            scale = float(tensors[stem + ".weight_scale"].to(torch.float32).reshape(-1)[0])
            data = (unpack_weights(value, dtype=torch.float32) * scale).numpy()
        elif any(stem.endswith(k) for k in ternary_keys):
            wt = value.float()
            s = wt.abs().mean().clamp(min=1e-5)
            iscale = 1 / s
            data = ((wt * iscale).round().clamp(-1, 1) / iscale).to(value.dtype).to(torch.float32).numpy()
        else:
            data = value.to(torch.float32).numpy()
        if data.ndim <= 1 or new_name.endswith("_norm.weight"):
            dq = gguf.GGMLQuantizationType.F32
        elif new_name == "token_embd.weight" and qtype in (
            gguf.GGMLQuantizationType.TQ1_0, gguf.GGMLQuantizationType.TQ2_0
        ):
            dq = gguf.GGMLQuantizationType.F16
        else:
            dq = qtype
        try:
            payload = gguf.quants.quantize(data, dq)
        except gguf.QuantError:
            dq = gguf.GGMLQuantizationType.F16
            payload = gguf.quants.quantize(data, dq)
        w.add_tensor(new_name, payload, raw_dtype=dq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out_path)


# ----------------------------------------------------------------------------------------------
# reading GGUF files back (test side)
# ----------------------------------------------------------------------------------------------

I2S_TYPE_ID = 36


def read_gguf(path: os.PathLike | str):
    """A ``gguf.GGUFReader`` that also accepts bitnet.cpp's I2_S tensors (type id 36).

    gguf's reader only knows upstream types; an I2_S tensor is returned here with
    ``tensor_type == 36`` and ``data`` = its raw ``n/4 + 32`` bytes (uint8).
    """
    import gguf
    from gguf.gguf_reader import ReaderTensor

    class _Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            plain = [f for f in fields if int(f.parts[4][0]) != I2S_TYPE_ID]
            i2s = [f for f in fields if int(f.parts[4][0]) == I2S_TYPE_ID]
            super()._build_tensors(start_offs, plain)
            for f in i2s:
                _nl, name_data, _nd, dims, _raw, offset = f.parts
                n = int(np.prod(dims))
                nbytes = n // 4 + 32
                offs = int(start_offs + offset[0])
                self.tensors.append(ReaderTensor(
                    name=str(bytes(name_data), encoding="utf-8"), tensor_type=I2S_TYPE_ID, shape=dims,
                    n_elements=n, n_bytes=nbytes, data_offset=offs,
                    data=self._get(offs, np.uint8, nbytes), field=f,
                ))

    return _Reader(str(path))


def gguf_kv(reader) -> Dict[str, Any]:
    """Metadata as plain Python values (strings decoded, arrays as lists)."""
    out: Dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = f.contents()
    return out


def decode_i2s(raw: np.ndarray, n_out: int, n_in: int) -> Tuple[np.ndarray, float]:
    """Test-side I2_S decoder: (t int8 [n_out, n_in], beta). Written from REFERENCE.md 2.6."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    n = n_out * n_in
    assert raw.size == n // 4 + 32, (raw.size, n)
    packed = raw[: n // 4].reshape(-1, 32)                     # one row of 32 bytes per 128 elements
    codes = np.stack([(packed >> 6) & 3, (packed >> 4) & 3, (packed >> 2) & 3, packed & 3], axis=1)
    t = codes.reshape(-1).astype(np.int8) - 1                   # [block][group][j] = element 128b+32g+j
    beta = float(raw[n // 4: n // 4 + 4].view("<f4")[0])
    assert not raw[n // 4 + 4:].any(), "I2_S tail padding must be zero"
    return t.reshape(n_out, n_in), beta


def effective_weight(reader, name: str) -> np.ndarray:
    """Float32 ``[out, in]`` weight of a projection as a loader must see it: decoded codes times
    the optional ``<stem>.scale`` tensor (or the I2_S in-tensor scale)."""
    import gguf

    tensors = {t.name: t for t in reader.tensors}
    t = tensors[name]
    n_in, n_out = int(t.shape[0]), int(t.shape[1])
    if int(t.tensor_type) == I2S_TYPE_ID:
        codes, beta = decode_i2s(t.data, n_out, n_in)
        return codes.astype(np.float32) * np.float32(beta)
    qt = gguf.GGMLQuantizationType(int(t.tensor_type))
    w = gguf.quants.dequantize(np.asarray(t.data), qt).reshape(n_out, n_in).astype(np.float32)
    scale = tensors.get(name[: -len(".weight")] + ".scale")
    if scale is not None:
        w = w * np.float32(np.asarray(scale.data).reshape(-1)[0])
    return w


def numpy_weights_from_gguf(path: os.PathLike | str, *, default_act: str = "silu"):
    """Build :class:`numpy_reference.BitNetWeights` from a GGUF file, reading the model the way a
    loader must: hyper-parameters from ``<arch>.*`` keys (head_dim defaults to n_embd/n_head,
    the activation to ``default_act`` when ``<arch>.hidden_activation`` is absent, as upstream),
    tensors by their GGUF names, ternary weights decoded with their scales."""
    import gguf
    import numpy_reference as nr

    r = read_gguf(path)
    kv = gguf_kv(r)
    arch = kv["general.architecture"]
    tensors = {t.name: t for t in r.tensors}

    def floats(name: str) -> np.ndarray:
        t = tensors[name]
        qt = gguf.GGMLQuantizationType(int(t.tensor_type))
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        return gguf.quants.dequantize(np.asarray(t.data), qt).reshape(shape).astype(np.float64)

    def ternary(name: str) -> "nr.Ternary":
        w = effective_weight(r, name).astype(np.float64)
        nz = np.abs(w[w != 0])
        beta = float(nz[0]) if nz.size else 1.0
        assert np.all(nz == beta), f"{name}: more than one magnitude"
        return nr.Ternary(np.sign(w).astype(np.int8), beta)

    n_layers = int(kv[f"{arch}.block_count"])
    layers = []
    for i in range(n_layers):
        b = f"blk.{i}."
        layers.append(nr.Layer(
            attn_norm=floats(b + "attn_norm.weight"),
            q=ternary(b + "attn_q.weight"), k=ternary(b + "attn_k.weight"), v=ternary(b + "attn_v.weight"),
            attn_sub_norm=floats(b + "attn_sub_norm.weight") if b + "attn_sub_norm.weight" in tensors else None,
            o=ternary(b + "attn_output.weight"),
            ffn_norm=floats(b + "ffn_norm.weight"),
            gate=ternary(b + "ffn_gate.weight"), up=ternary(b + "ffn_up.weight"),
            ffn_sub_norm=floats(b + "ffn_sub_norm.weight") if b + "ffn_sub_norm.weight" in tensors else None,
            down=ternary(b + "ffn_down.weight"),
        ))
    act = kv.get(f"{arch}.hidden_activation", default_act)
    return nr.BitNetWeights(
        embed=floats("token_embd.weight"),
        final_norm=floats("output_norm.weight"),
        layers=layers,
        n_heads=int(kv[f"{arch}.attention.head_count"]),
        n_kv_heads=int(kv.get(f"{arch}.attention.head_count_kv", kv[f"{arch}.attention.head_count"])),
        rope_theta=float(kv.get(f"{arch}.rope.freq_base", 10000.0)),
        eps=float(kv[f"{arch}.attention.layer_norm_rms_epsilon"]),
        act="relu2" if act in ("relu2", "relu_squared") else act,
        lm_head=floats("output.weight") if "output.weight" in tensors else None,
    )


class FakeDevice:
    """A stand-in for ``bitnet.BitNet(device="sim")`` used only to self-test the parity harness
    (``BITNET_TEST_FAKE_ENGINE=1``): it runs the numpy model in float32 (a different rounding
    order from the float64 oracle, like a real fp32 engine) on the weights decoded from the GGUF."""

    def __init__(self, device: str = "sim") -> None:
        self.w = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.w = None

    def load_weights(self, path) -> None:
        self.w = numpy_weights_from_gguf(path)

    def logits(self, tokens) -> np.ndarray:
        import numpy_reference as nr

        return nr.forward(self.w, list(tokens), dtype=np.float32).astype(np.float32)

    def inference(self, tokens, max_output: int = 1024) -> np.ndarray:
        import numpy_reference as nr

        new, _ = nr.greedy(self.w, list(tokens), max_output, dtype=np.float32)
        return np.asarray(new, dtype=np.int32)
