"""Convert a Hugging Face BitNet b1.58 checkpoint directory to a GGUF model file.

Input: a directory with ``config.json`` and ``*.safetensors`` (one file, or shards listed in
``model.safetensors.index.json``), in any of these forms (REFERENCE.md sections 1.2, 1.4, 2.1):

* packed ``microsoft/bitnet-b1.58-2B-4T``: each projection is uint8 ``[ceil(out/4), in]`` (byte
  ``(p, c)`` holds rows p, p+R, p+2R, p+3R in bit pairs 1:0..7:6 as code t+1) plus a scalar
  ``weight_scale``. ``quantization_config.linear_class == "autobitlinear"`` means
  ``W = t * weight_scale``; ``bitlinear`` (or no linear_class) means ``W = t / weight_scale``.
* float master weights (bf16/fp16/fp32, e.g. ``...-2B-4T-bf16``): ternarised here by absmean,
  ``beta = max(mean|W|, 1e-5)`` (accumulated in float64, rounded to fp32) and
  ``t = clamp(round_half_even(W / beta), -1, 1)``.

Architectures: ``BitNetForCausalLM`` (model_type ``bitnet``: sub-norms, relu², tied embeddings,
NeoX rope) and the 1bitLLM ``BitnetForCausalLM`` spelling of the same graph.

Output types (``type``):

* ``tq2_0``, ``tq1_0``, ``f16``: arch ``bitnet`` exactly as upstream llama.cpp loads it (keys and
  tensor names of ``src/models/bitnet.cpp``; no q/k permutation since the arch uses NEOX rope).
  Ternary tensors are encoded with ``gguf.quants``. When beta is exactly representable in fp16
  (always true for bf16 ``weight_scale`` values of packed autobitlinear checkpoints) the codes
  carry it (TQ block scale ``d = beta``, or F16 values ``t * beta``). Otherwise the codes are
  written with ``d = 1`` (values ``t``) and beta goes into the optional F32 tensor
  ``blk.N.<proj>.scale`` of shape [1], which upstream multiplies onto the matmul output
  (``build_lora_mm(w, cur, w_s)``) - so the file stays exact.
  TQ blocks that are all zero get ``d`` set like the other blocks (their values are 0 either
  way), so every block of a tensor carries the same scale.
* ``i2_s``: the bitnet.cpp dialect: arch ``bitnet-b1.58``, keys prefixed ``bitnet-b1.58.``,
  ternary tensors of ggml type id 36 whose data is n/4 packed bytes (128-element blocks of the
  row-major flattened tensor; byte j of a block holds elements j, j+32, j+64, j+96 in bits
  7:6, 5:4, 3:2, 1:0 as code t+1) followed by the f32 beta and 28 zero bytes;
  ``general.file_type`` 40. gguf's writer accepts the raw id because the payload is handed over
  as an int8 array with ``raw_shape`` (no byte-shape conversion happens for non-uint8 data).

Always written: ``<arch>.hidden_activation`` (``relu2`` or ``silu``; loaders default to SiLU
when it is absent), ``<arch>.vocab_size``, ``<arch>.rope.dimension_count``, the HF token ids
(``tokenizer.ggml.{bos,eos,padding}_token_id``) and the whole HF ``config.json`` as the string
``bitnet_pkg.hf_config_json`` (plus ``bitnet_pkg.weight_source``). When ``tokenizer.json`` is
present its vocabulary is written as ``tokenizer.ggml.*`` (model ``gpt2`` for byte-level BPE,
``llama`` for SentencePiece-style BPE), with merges, token types, special tokens and the chat
template, so that the GGUF file alone rebuilds the tokenizer (:func:`_add_tokenizer`).

Dependencies: numpy, ``gguf`` and ``safetensors`` (``pip install bitnet[convert]``); torch is
not needed. ``safetensors``' numpy front end cannot return bf16 tensors (numpy has no bf16),
so for BF16 tensors only, the file's JSON header is read here to find the raw bytes, which are
widened to float32 exactly (bf16 is the top half of an fp32).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import (
    BitNetError,
    BitNetFileNotFoundError,
    BitNetFormatError,
    BitNetValueError,
    ErrorCode,
)

__all__ = [
    "OUTPUT_TYPES",
    "EMBED_TYPES",
    "convert_hf_to_gguf",
    "add_arguments",
    "run",
    "main",
]

logger = logging.getLogger("bitnet.convert")

OUTPUT_TYPES = ("tq2_0", "tq1_0", "i2_s", "f16")
EMBED_TYPES = ("f16", "f32", "bf16", "q8_0")

# ggml type id of I2_S in the bitnet.cpp fork (upstream has no such type; REFERENCE.md 2.4).
I2S_TYPE_ID = 36
# llama_ftype values written to general.file_type (upstream llama.h; I2_S from the fork).
_FILE_TYPE = {"f16": 1, "tq1_0": 36, "tq2_0": 37, "i2_s": 40}

KEY_HF_CONFIG = "bitnet_pkg.hf_config_json"
KEY_WEIGHT_SOURCE = "bitnet_pkg.weight_source"
# A byte-level BPE split regex with no llama.cpp name, stored verbatim (read by bitnet.tokenizer).
KEY_PRE_REGEX = "bitnet_pkg.pre_tokenizer_regex"

# HF projection module suffix -> GGUF tensor stem (REFERENCE.md 2.3)
_PROJ = (
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
)
_NORMS = (
    ("input_layernorm", "attn_norm"),
    ("self_attn.attn_sub_norm", "attn_sub_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.ffn_sub_norm", "ffn_sub_norm"),
)
# 1bitLLM (BitnetForCausalLM) names of the two sub-norms
_NORM_ALIASES = {
    "self_attn.attn_sub_norm": ("self_attn.inner_attn_ln",),
    "mlp.ffn_sub_norm": ("mlp.ffn_layernorm",),
}
_ACTIVATIONS = {"relu2": "relu2", "relu_squared": "relu2", "silu": "silu", "swish": "silu"}
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _format_error(msg: str) -> BitNetFormatError:
    return BitNetFormatError(ErrorCode.FILE, msg)


def _value_error(msg: str) -> BitNetValueError:
    return BitNetValueError(ErrorCode.INVALID, msg)


def _import_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BitNetError(
            ErrorCode.INVALID,
            "converting needs the 'gguf' and 'safetensors' packages: pip install 'bitnet[convert]'",
        ) from exc
    return gguf


# ---------------------------------------------------------------------------------------------
# reading the checkpoint
# ---------------------------------------------------------------------------------------------

@dataclass
class _TensorRef:
    file: Path
    dtype: str                  # safetensors dtype string, e.g. "BF16", "U8"
    shape: Tuple[int, ...]


class _Checkpoint:
    """The tensors of a safetensors checkpoint directory, read one at a time as numpy arrays."""

    def __init__(self, hf_dir: Path) -> None:
        try:
            from safetensors import safe_open
        except ImportError as exc:  # pragma: no cover
            raise BitNetError(
                ErrorCode.INVALID,
                "converting needs the 'safetensors' package: pip install 'bitnet[convert]'",
            ) from exc
        self._safe_open = safe_open
        self.dir = hf_dir
        self.files = self._find_files(hf_dir)
        self.tensors: Dict[str, _TensorRef] = {}
        for f in self.files:
            try:
                with safe_open(str(f), framework="numpy") as h:
                    for name in h.keys():
                        sl = h.get_slice(name)
                        if name in self.tensors:
                            raise _format_error(f"{f.name}: tensor {name!r} also appears in {self.tensors[name].file.name}")
                        self.tensors[name] = _TensorRef(f, str(sl.get_dtype()), tuple(int(d) for d in sl.get_shape()))
            except BitNetError:
                raise
            except Exception as exc:  # safetensors raises its own error types
                raise _format_error(f"{f}: not a readable safetensors file ({exc})") from exc

    @staticmethod
    def _find_files(hf_dir: Path) -> List[Path]:
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise _format_error(f"{index}: not a valid safetensors index (needs a 'weight_map' object): {exc}") from exc
            files = []
            for fname in sorted(set(weight_map.values())):
                p = hf_dir / fname
                if not p.is_file():
                    raise _format_error(f"{index} lists shard {fname!r}, which does not exist in {hf_dir}")
                files.append(p)
            return files
        files = sorted(hf_dir.glob("*.safetensors"))
        if not files:
            hint = ""
            if list(hf_dir.glob("*.bin")) or list(hf_dir.glob("*.pt")):
                hint = " (PyTorch .bin/.pt weights are not supported: re-save them with safetensors)"
            raise _format_error(f"{hf_dir}: no *.safetensors weight files found{hint}")
        return files

    def has(self, name: str) -> bool:
        return name in self.tensors

    def ref(self, name: str) -> _TensorRef:
        try:
            return self.tensors[name]
        except KeyError:
            raise _format_error(f"{self.dir}: tensor {name!r} is missing from the checkpoint") from None

    def read(self, name: str) -> np.ndarray:
        """The tensor as numpy: float types widened to float32, integer types as stored."""
        ref = self.ref(name)
        if ref.dtype == "BF16":
            return self._read_bf16(name, ref)
        with self._safe_open(str(ref.file), framework="numpy") as h:
            arr = h.get_tensor(name)
        if arr.dtype in (np.float16, np.float64):
            arr = arr.astype(np.float32)
        return arr

    @staticmethod
    def _read_bf16(name: str, ref: _TensorRef) -> np.ndarray:
        # safetensors layout: u64 little-endian header size N, N bytes of JSON, then the data;
        # each entry's data_offsets are relative to the end of the header.
        with open(ref.file, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
            begin, end = header[name]["data_offsets"]
            n = int(np.prod(ref.shape, dtype=np.int64))
            if end - begin != 2 * n:
                raise _format_error(f"{ref.file.name}: tensor {name!r} has {end - begin} bytes, expected {2 * n} for BF16{list(ref.shape)}")
            f.seek(8 + hlen + begin)
            raw = np.frombuffer(f.read(end - begin), dtype="<u2")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(ref.shape)


# ---------------------------------------------------------------------------------------------
# the model description taken from config.json
# ---------------------------------------------------------------------------------------------

@dataclass
class _Spec:
    family: str                 # "bitnet"
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    ctx: int
    rope_theta: float
    eps: float
    act: str                    # "relu2" | "silu"
    tied: bool
    linear_class: str           # "autobitlinear" | "bitlinear"
    bos: Optional[int] = None
    eos: Optional[int] = None
    pad: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _cfg_int(cfg: Dict[str, Any], key: str, path: Path, default: Optional[int] = None, positive: bool = True) -> int:
    val = cfg.get(key, default)
    if val is None:
        raise _format_error(f"{path}: required key {key!r} is missing")
    if isinstance(val, bool) or not isinstance(val, int) or (positive and val <= 0):
        raise _format_error(f"{path}: {key!r} must be a positive integer, got {val!r}")
    return val


def _token_id(cfg: Dict[str, Any], key: str) -> Optional[int]:
    val = cfg.get(key)
    if isinstance(val, list):          # e.g. LLaMA-3.1 style eos lists: the first is the main one
        val = val[0] if val else None
    if val is None or isinstance(val, bool) or not isinstance(val, int) or val < 0:
        return None
    return val


def _read_spec(hf_dir: Path) -> Tuple[_Spec, Dict[str, Any], str]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise _format_error(f"{hf_dir}: config.json is missing (expected a Hugging Face model directory)")
    text = path.read_text(encoding="utf-8")
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise _format_error(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise _format_error(f"{path}: expected a JSON object")

    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if "BitNetForCausalLM" in archs or "BitnetForCausalLM" in archs or model_type == "bitnet":
        family = "bitnet"
    elif "LlamaForCausalLM" in archs or model_type == "llama":
        raise _format_error(
            f"{path}: LLaMA-type BitNet checkpoints (architectures {archs}, e.g. Llama3-8B-1.58 or "
            "Falcon3-1.58bit) are not supported by this converter yet; only BitNetForCausalLM is"
        )
    else:
        raise _format_error(
            f"{path}: unsupported 'architectures' {archs!r} / model_type {model_type!r}: "
            "expected BitNetForCausalLM (model_type 'bitnet')"
        )

    hidden = _cfg_int(cfg, "hidden_size", path)
    heads = _cfg_int(cfg, "num_attention_heads", path)
    kv_heads = _cfg_int(cfg, "num_key_value_heads", path, default=heads)
    if hidden % heads and "head_dim" not in cfg:
        raise _format_error(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    head_dim = _cfg_int(cfg, "head_dim", path, default=hidden // heads)
    if heads % kv_heads:
        raise _format_error(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if head_dim % 2:
        raise _format_error(f"{path}: head_dim {head_dim} must be even for rotary embeddings")

    act_raw = cfg.get("hidden_act", "silu")
    act = _ACTIVATIONS.get(str(act_raw).lower()) if isinstance(act_raw, str) else None
    if act is None:
        raise _format_error(f"{path}: hidden_act {act_raw!r} is not supported (expected 'relu2' or 'silu')")

    rope_theta = cfg.get("rope_theta")
    rope_params = cfg.get("rope_parameters")
    if rope_theta is None and isinstance(rope_params, dict):
        rope_theta = rope_params.get("rope_theta")
    if rope_theta is None:
        rope_theta = 500000.0 if model_type == "bitnet" else 10000.0   # the config classes' defaults
        logger.warning("%s: no rope_theta; using the %s default %g", path, archs[:1] or model_type, rope_theta)
    if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool) or not rope_theta > 0:
        raise _format_error(f"{path}: rope_theta must be a positive number, got {rope_theta!r}")
    scaling = cfg.get("rope_scaling")
    if isinstance(rope_params, dict) and rope_params.get("rope_type", "default") != "default":
        scaling = rope_params
    if scaling:
        raise _format_error(f"{path}: rope scaling {scaling!r} is not supported (BitNet checkpoints use plain RoPE)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise _format_error(f"{path}: attention_bias/mlp_bias is set, but BitNet linears have no bias")

    eps = cfg.get("rms_norm_eps", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise _format_error(f"{path}: rms_norm_eps must be a positive number, got {eps!r}")

    qcfg = cfg.get("quantization_config") or {}
    if not isinstance(qcfg, dict):
        raise _format_error(f"{path}: quantization_config must be an object")
    if qcfg and qcfg.get("quant_method", "bitnet") != "bitnet":
        raise _format_error(
            f"{path}: quantization_config.quant_method is {qcfg.get('quant_method')!r}; only 'bitnet' checkpoints can be converted"
        )
    linear_class = qcfg.get("linear_class") or "bitlinear"
    if linear_class not in ("autobitlinear", "bitlinear"):
        raise _format_error(f"{path}: quantization_config.linear_class {linear_class!r} is not 'autobitlinear' or 'bitlinear'")
    if qcfg.get("use_rms_norm"):
        raise _format_error(
            f"{path}: quantization_config.use_rms_norm=true (an extra RMSNorm inside every BitLinear) is not supported"
        )

    tied = bool(cfg.get("tie_word_embeddings", family == "bitnet"))
    spec = _Spec(
        family=family,
        hidden=hidden,
        ffn=_cfg_int(cfg, "intermediate_size", path),
        layers=_cfg_int(cfg, "num_hidden_layers", path),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=_cfg_int(cfg, "vocab_size", path),
        ctx=_cfg_int(cfg, "max_position_embeddings", path, default=2048),
        rope_theta=float(rope_theta),
        eps=float(eps),
        act=act,
        tied=tied,
        linear_class=linear_class,
        bos=_token_id(cfg, "bos_token_id"),
        eos=_token_id(cfg, "eos_token_id"),
        pad=_token_id(cfg, "pad_token_id"),
    )
    return spec, cfg, text


# ---------------------------------------------------------------------------------------------
# ternary weights
# ---------------------------------------------------------------------------------------------

def unpack_hf_weights(packed: np.ndarray, n_out: int) -> np.ndarray:
    """HF packed uint8 ``[ceil(out/4), in]`` -> int8 codes ``[n_out, in]`` in {-1, 0, 1}.

    Same layout as ``transformers.integrations.bitnet.unpack_weights``: with R packed rows,
    bits ``2i+1:2i`` of byte (p, c) hold row ``p + i*R`` as code ``t + 1``.
    """
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]
    codes = np.concatenate(parts, axis=0)[:n_out]
    return codes.astype(np.int8) - 1


def ternarise_absmean(w: np.ndarray) -> Tuple[np.ndarray, float]:
    """Absmean ternarisation (REFERENCE.md 1.1): beta = max(mean|W|, 1e-5), t = clamp(rint(W/beta)).

    The mean is accumulated in float64 and rounded to fp32 (the correctly rounded fp32 value of
    the fp32 formula); the division runs in fp32 like HF's WeightQuant.
    """
    w32 = np.asarray(w, dtype=np.float32)
    beta = np.float32(max(float(np.abs(w32, dtype=np.float64).mean()) if w32.size else 0.0, 1e-5))
    t = np.clip(np.rint(w32 / beta), -1, 1).astype(np.int8)
    return t, float(beta)


@dataclass
class _Ternary:
    t: np.ndarray        # int8 [out, in]
    beta: float          # fp32 value: W = t * beta


def _read_ternary(ck: _Checkpoint, spec: _Spec, stem: str, n_out: int, n_in: int) -> Tuple[_Ternary, str]:
    name = stem + ".weight"
    ref = ck.ref(name)
    if ref.dtype == "U8":
        rows = (n_out + 3) // 4
        if ref.shape != (rows, n_in):
            raise _format_error(
                f"{ck.dir}: packed tensor {name!r} has shape {list(ref.shape)}, expected [{rows}, {n_in}] "
                f"(ceil({n_out}/4) rows of 4 packed ternary codes); check config.json"
            )
        scale_name = stem + ".weight_scale"
        if not ck.has(scale_name):
            raise _format_error(f"{ck.dir}: packed tensor {name!r} has no {scale_name!r} (every packed projection needs its scale)")
        ws = ck.read(scale_name).astype(np.float32).reshape(-1)
        if ws.size != 1:
            raise _format_error(f"{ck.dir}: {scale_name!r} has {ws.size} elements; expected one scalar per tensor")
        ws0 = np.float32(ws[0])
        if not np.isfinite(ws0) or ws0 <= 0:
            raise _format_error(f"{ck.dir}: {scale_name!r} = {float(ws0)!r}; a weight scale must be finite and > 0")
        packed = ck.read(name)
        if (((packed >> 6) == 3) | (((packed >> 4) & 3) == 3) | (((packed >> 2) & 3) == 3) | ((packed & 3) == 3)).any():
            raise _format_error(f"{ck.dir}: packed tensor {name!r} contains the unused 2-bit code 3; it is not a BitNet packed weight")
        t = unpack_hf_weights(packed, n_out)
        if spec.linear_class == "autobitlinear":
            beta = ws0
        else:
            beta = np.float32(np.float32(1.0) / ws0)
        return _Ternary(t, float(beta)), f"packed-{spec.linear_class}"
    if ref.dtype in ("BF16", "F16", "F32", "F64"):
        if ref.shape != (n_out, n_in):
            raise _format_error(f"{ck.dir}: tensor {name!r} has shape {list(ref.shape)}, expected [{n_out}, {n_in}]; check config.json")
        w = ck.read(name)
        if not np.isfinite(w).all():
            raise _format_error(f"{ck.dir}: tensor {name!r} contains NaN or Inf")
        t, beta = ternarise_absmean(w)
        return _Ternary(t, beta), "master"
    raise _format_error(f"{ck.dir}: tensor {name!r} has dtype {ref.dtype}; expected packed U8 or a float master weight")


def _fp16_exact(x: float) -> bool:
    with np.errstate(over="ignore"):
        h = np.float16(x)
    return bool(np.isfinite(h) and np.float32(h) == np.float32(x) and x > 0)


def _fix_block_scales(payload: np.ndarray, block_bytes: int, d: float) -> np.ndarray:
    """Give all-zero TQ blocks (d == 0 from the quantiser) the tensor's scale too."""
    blocks = payload.reshape(-1, block_bytes)
    dv = blocks[:, block_bytes - 2:].copy().view(np.float16).reshape(-1)
    dv[dv == 0] = np.float16(d)
    blocks[:, block_bytes - 2:] = dv.view(np.uint8).reshape(-1, 2)
    return payload


def _encode_tq(gguf, w: _Ternary, qtype, name: str) -> Tuple[np.ndarray, Optional[float]]:
    """Encode with gguf.quants; returns (payload, scale for a .scale tensor or None)."""
    if _fp16_exact(w.beta):
        values, d, scale = w.t.astype(np.float32) * np.float32(w.beta), w.beta, None
    else:
        values, d, scale = w.t.astype(np.float32), 1.0, w.beta
    payload = gguf.quants.quantize(values, qtype)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    payload = _fix_block_scales(payload, block_bytes, d)
    # self-check: the encoder must reproduce t * d exactly
    back = gguf.quants.dequantize(payload, qtype)
    if not np.array_equal(back, values):
        raise BitNetError(ErrorCode.HW_ERROR, f"internal error: {qtype.name} encoding of {name} does not round-trip")
    return payload, scale


def encode_i2s(t: np.ndarray, beta: float) -> np.ndarray:
    """bitnet.cpp I2_S bytes of a ternary tensor (REFERENCE.md 2.6): n/4 packed bytes + f32 beta + 28 zeros."""
    flat = (t.reshape(-1).astype(np.int16) + 1).astype(np.uint8)        # code t+1
    n = flat.size
    if n % 128:
        raise _value_error(f"I2_S needs the element count to be a multiple of 128, got {n}")
    blocks = flat.reshape(-1, 4, 32)                                     # [block, group, j]
    packed = (blocks[:, 0] << 6) | (blocks[:, 1] << 4) | (blocks[:, 2] << 2) | blocks[:, 3]
    out = np.zeros(n // 4 + 32, dtype=np.uint8)
    out[: n // 4] = packed.reshape(-1)
    out[n // 4: n // 4 + 4] = np.frombuffer(np.float32(beta).astype("<f4").tobytes(), dtype=np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# float tensors
# ---------------------------------------------------------------------------------------------

def _encode_float(gguf, x: np.ndarray, kind: str, name: str):
    """(payload, raw_dtype) for an embedding-like matrix in one of EMBED_TYPES."""
    Q = gguf.GGMLQuantizationType
    if kind == "f32":
        return np.ascontiguousarray(x, dtype=np.float32), Q.F32
    if kind == "f16":
        if np.abs(x).max(initial=0.0) > 65504.0:
            raise _value_error(f"{name}: values exceed the fp16 range; use --embed-type bf16 or f32")
        return x.astype(np.float16), Q.F16
    if kind == "bf16":
        return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), Q.BF16), Q.BF16
    if kind == "q8_0":
        if x.shape[-1] % 32:
            raise _value_error(f"{name}: q8_0 needs rows that are a multiple of 32, got {x.shape[-1]}")
        return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), Q.Q8_0), Q.Q8_0
    raise _value_error(f"unknown embedding type {kind!r}; expected one of {', '.join(EMBED_TYPES)}")


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

_SP_SPACE = "\u2581"   # SentencePiece's visible space


def _json_kind(tj: Dict[str, Any]) -> Optional[str]:
    """'gpt2' (byte-level BPE), 'llama' (SentencePiece-style BPE) or None, from tokenizer.json."""
    blob = json.dumps({k: tj.get(k) for k in ("pre_tokenizer", "decoder", "normalizer")})
    if '"ByteLevel"' in blob:
        return "gpt2"
    if tj["model"].get("byte_fallback") or '"ByteFallback"' in blob or '"Metaspace"' in blob or _SP_SPACE in blob:
        return "llama"
    return None


def _split_regex(tj: Dict[str, Any]) -> Tuple[Optional[str], bool]:
    """The Split pre-tokenizer's regex (if any) and whether ByteLevel splits with GPT-2's own regex."""
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regex, bytelevel_regex = None, False
    for it in items:
        if not isinstance(it, dict):
            continue
        if it.get("type") == "Split" and isinstance(it.get("pattern"), dict) and "Regex" in it["pattern"]:
            regex = it["pattern"]["Regex"]
        if it.get("type") == "ByteLevel" and it.get("use_regex", True):
            bytelevel_regex = True
    return regex, bytelevel_regex


def _post_processor_adds_bos(tj: Dict[str, Any]) -> Optional[bool]:
    pp = tj.get("post_processor") or {}
    items = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for it in items:
        if isinstance(it, dict) and it.get("type") == "TemplateProcessing":
            single = it.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return None


def _read_tokenizer_config(hf_dir: Path) -> Dict[str, Any]:
    tc_path = hf_dir / "tokenizer_config.json"
    tc: Dict[str, Any] = {}
    if tc_path.is_file():
        try:
            tc = json.loads(tc_path.read_text(encoding="utf-8"))
        except ValueError:
            logger.warning("%s: invalid JSON; ignored", tc_path)
    template = tc.get("chat_template")
    if isinstance(template, list):     # named templates: keep the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    jinja = hf_dir / "chat_template.jinja"     # newer transformers save the template beside the config
    if not isinstance(template, str) and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    tc["chat_template"] = template if isinstance(template, str) else None
    return tc


def _add_tokenizer(writer, hf_dir: Path, spec: _Spec) -> None:
    """Write the tokenizer of ``hf_dir`` as ``tokenizer.ggml.*`` so the GGUF file alone rebuilds it.

    Byte-level BPE tokenizer.json files become model ``gpt2`` (tokens, types, merges, and the
    pre-tokenizer by name: ``llama-bpe``, ``gpt2`` or ``qwen2``; any other split regex is stored
    verbatim as ``bitnet_pkg.pre_tokenizer_regex``). SentencePiece-style BPE (``▁`` spaces,
    byte fallback) becomes model ``llama`` with tokens, types, scores (``-rank`` of the merge
    that makes each piece, so merge order survives for readers without merges), merges and
    ``add_space_prefix``. Added tokens are CONTROL when special, USER_DEFINED otherwise; byte
    pieces ``<0xNN>`` are BYTE. From tokenizer_config.json (or chat_template.jinja): the chat
    template, ``add_bos_token``/``add_eos_token``, and ``eot_token_id`` when its eos token differs
    from config.json's.
    """
    from .tokenizer import PRE_TOKENIZER_REGEX

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
        model = tj["model"]
        if model.get("type") != "BPE":
            logger.warning("%s: tokenizer model %r is not BPE; tokenizer keys not written", path, model.get("type"))
            return
        vocab: Dict[str, int] = dict(model["vocab"])
        merges_raw = model.get("merges", [])
        added = tj.get("added_tokens", [])
        kind = _json_kind(tj)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s: unreadable tokenizer (%s); tokenizer keys not written", path, exc)
        return
    if kind is None:
        logger.warning("%s: neither byte-level nor SentencePiece-style BPE; written as byte-level BPE (gpt2)", path)
        kind = "gpt2"
    special_ids = set()
    user_ids = set()
    for tok in added:
        vocab[tok["content"]] = int(tok["id"])
        (special_ids if tok.get("special") else user_ids).add(int(tok["id"]))
    if vocab and max(vocab.values()) >= spec.vocab:
        logger.warning("%s: token id %d >= vocab_size %d; tokenizer keys not written", path, max(vocab.values()), spec.vocab)
        return
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges_raw]
    if any(len(m) != 2 or " " in m[0] or " " in m[1] for m in merges):
        logger.warning("%s: a merge has a token with a space, which GGUF's 'A B' merges cannot hold; "
                       "tokenizer keys not written", path)
        return
    tokens = [f"[PAD{i}]" for i in range(spec.vocab)]
    types = [5] * spec.vocab                      # UNUSED until filled
    unk = model.get("unk_token")
    for text, i in vocab.items():
        tokens[i] = text
        if i in special_ids:
            types[i] = 2 if text == unk else 3     # UNKNOWN / CONTROL
        elif i in user_ids:
            types[i] = 4                           # USER_DEFINED
        elif kind == "llama" and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = 6                           # BYTE
        else:
            types[i] = 1                           # NORMAL
    tc = _read_tokenizer_config(hf_dir)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        regex, bytelevel_regex = _split_regex(tj)
        names = {v: k for k, v in reversed(list(PRE_TOKENIZER_REGEX.items()))}   # first name of each regex
        if regex is not None:
            pre = "llama-bpe" if PRE_TOKENIZER_REGEX["llama-bpe"] == regex else names.get(regex)
            if pre is None:
                pre = "default"
                writer.add_string(KEY_PRE_REGEX, regex)
        elif bytelevel_regex:
            pre = "gpt-2"
        else:
            pre = "llama-bpe" if spec.vocab == 128256 else "gpt-2"
        writer.add_tokenizer_pre(pre)
    else:
        rank = {}
        for r, (a, b) in enumerate(merges):
            rank.setdefault(a + b, r)
        writer.add_token_scores([-float(rank[t] + 1) if t in rank else 0.0 for t in tokens])
        norm_blob = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")])
        prepend = '"Prepend"' in norm_blob or ('"Metaspace"' in norm_blob and '"never"' not in norm_blob)
        writer.add_bool("tokenizer.ggml.add_space_prefix", prepend)
        if unk in vocab:
            writer.add_unk_token_id(vocab[unk])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges([f"{a} {b}" for a, b in merges])

    add_bos: Optional[bool] = _post_processor_adds_bos(tj)
    if add_bos is None and spec.vocab == 128256:
        add_bos = True
    if isinstance(tc.get("add_bos_token"), bool):
        add_bos = tc["add_bos_token"]
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if isinstance(tc.get("add_eos_token"), bool):
        writer.add_add_eos_token(tc["add_eos_token"])
    if tc["chat_template"]:
        writer.add_chat_template(tc["chat_template"])
    eos_tok = tc.get("eos_token")
    if isinstance(eos_tok, dict):
        eos_tok = eos_tok.get("content")
    if isinstance(eos_tok, str) and eos_tok in vocab and vocab[eos_tok] != spec.eos:
        writer.add_eot_token_id(vocab[eos_tok])   # instruct models end turns with e.g. <|eot_id|>


# ---------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------

def _check_type_fits(spec: _Spec, type: str) -> None:
    ins = {spec.hidden, spec.heads * spec.head_dim, spec.ffn}
    if type in ("tq2_0", "tq1_0"):
        bad = sorted(k for k in ins if k % 256)
        if bad:
            raise _value_error(
                f"--type {type} needs every projection's input size to be a multiple of 256 (TQ block size); "
                f"this model has {bad}. Use --type i2_s or f16"
            )
    if type == "i2_s":
        bad = sorted(k for k in ins if k % 128)
        if bad:
            raise _value_error(
                f"--type i2_s needs every projection's input size to be a multiple of 128; this model has {bad}. Use --type f16"
            )


def convert_hf_to_gguf(
    hf_dir: os.PathLike | str,
    out_path: os.PathLike | str,
    type: str = "tq2_0",
    embed_type: str = "f16",
    *,
    progress: bool = False,
) -> Path:
    """Convert a Hugging Face BitNet checkpoint directory to a GGUF file.

    Parameters
    ----------
    hf_dir : path
        Directory with ``config.json`` and ``*.safetensors`` (sharded checkpoints need
        ``model.safetensors.index.json``).
    out_path : path
        The GGUF file to write (written to a temporary name, then renamed into place).
    type : {"tq2_0", "tq1_0", "i2_s", "f16"}
        Encoding of the ternary projections (see the module docstring for each layout).
    embed_type : {"f16", "f32", "bf16", "q8_0"}
        Encoding of ``token_embd.weight``.
    progress : bool
        Show tqdm progress bars on stderr (layers encoded, then bytes written).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    BitNetValueError
        Unknown ``type``/``embed_type``, or a model shape the chosen type cannot encode.
    BitNetFileNotFoundError
        ``hf_dir`` does not exist.
    BitNetFormatError
        The checkpoint is incomplete or not a supported BitNet checkpoint (the message names the
        file, key or tensor).
    """
    gguf = _import_gguf()
    type = str(type).lower()
    embed_type = str(embed_type).lower()
    if type not in OUTPUT_TYPES:
        raise _value_error(f"unknown output type {type!r}; expected one of {', '.join(OUTPUT_TYPES)}")
    if embed_type not in EMBED_TYPES:
        raise _value_error(f"unknown embedding type {embed_type!r}; expected one of {', '.join(EMBED_TYPES)}")
    hf_dir = Path(hf_dir)
    out_path = Path(out_path)
    if not hf_dir.exists():
        raise BitNetFileNotFoundError(ErrorCode.FILE, f"{hf_dir}: no such checkpoint directory (it does not exist)")
    if not hf_dir.is_dir():
        raise _value_error(f"{hf_dir}: expected a Hugging Face checkpoint directory, got a file")

    spec, cfg, cfg_text = _read_spec(hf_dir)
    _check_type_fits(spec, type)
    ck = _Checkpoint(hf_dir)

    arch = "bitnet-b1.58" if type == "i2_s" else "bitnet"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp_path), arch)
    try:
        sources = _write_model(gguf, writer, ck, spec, type, embed_type, arch, progress)
        writer.add_string(KEY_HF_CONFIG, cfg_text)
        writer.add_string(KEY_WEIGHT_SOURCE, ",".join(sorted(sources)))
        _add_tokenizer(writer, hf_dir, spec)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        os.replace(tmp_path, out_path)
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        try:
            tmp_path.unlink()
        except OSError:
            pass
        raise
    logger.info("wrote %s (%s, embeddings %s)", out_path, type, embed_type)
    return out_path


def _write_model(gguf, writer, ck: _Checkpoint, spec: _Spec, type: str, embed_type: str, arch: str,
                 progress: bool = False) -> set:
    Q = gguf.GGMLQuantizationType
    writer.add_name(ck.dir.resolve().name)
    writer.add_file_type(_FILE_TYPE[type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_custom_alignment(32)
    writer.add_context_length(spec.ctx)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_layer_norm_rms_eps(spec.eps)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_rope_dimension_count(spec.head_dim)
    if spec.head_dim * spec.heads != spec.hidden:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_vocab_size(spec.vocab)
    writer.add_string(f"{arch}.hidden_activation", spec.act)
    if spec.bos is not None:
        writer.add_bos_token_id(spec.bos)
    if spec.eos is not None:
        writer.add_eos_token_id(spec.eos)
    if spec.pad is not None:
        writer.add_pad_token_id(spec.pad)

    used = set()

    def norm(hf_name: str, gguf_name: str, n: int, aliases: Sequence[str] = ()) -> None:
        for cand in (hf_name, *aliases):
            if ck.has(cand):
                hf_name = cand
                break
        ref = ck.ref(hf_name)
        if ref.shape != (n,):
            raise _format_error(f"{ck.dir}: tensor {hf_name!r} has shape {list(ref.shape)}, expected [{n}]")
        x = ck.read(hf_name).astype(np.float32)
        if not np.isfinite(x).all():
            raise _format_error(f"{ck.dir}: tensor {hf_name!r} contains NaN or Inf")
        writer.add_tensor(gguf_name, x, raw_dtype=Q.F32)
        used.add(hf_name)

    # token embedding
    emb_name = "model.embed_tokens.weight"
    ref = ck.ref(emb_name)
    if ref.shape != (spec.vocab, spec.hidden):
        raise _format_error(
            f"{ck.dir}: tensor {emb_name!r} has shape {list(ref.shape)}, expected [vocab_size={spec.vocab}, hidden_size={spec.hidden}]"
        )
    emb = ck.read(emb_name)
    if not np.isfinite(emb).all():
        raise _format_error(f"{ck.dir}: tensor {emb_name!r} contains NaN or Inf")
    payload, qt = _encode_float(gguf, emb, embed_type, "token_embd.weight")
    writer.add_tensor("token_embd.weight", payload, raw_dtype=qt)
    used.add(emb_name)
    del emb, payload
    norm("model.norm.weight", "output_norm.weight", spec.hidden)
    if not spec.tied:
        raise _format_error(
            f"{ck.dir}: tie_word_embeddings is false, but the 'bitnet' GGUF architecture always uses token_embd as the "
            "output head (there is no output.weight); such a checkpoint cannot be represented"
        )
    if ck.has("lm_head.weight"):
        used.add("lm_head.weight")        # tied: a stored copy of the embedding is ignored

    q_out = spec.heads * spec.head_dim
    kv_out = spec.kv_heads * spec.head_dim
    shapes = {
        "self_attn.q_proj": (q_out, spec.hidden),
        "self_attn.k_proj": (kv_out, spec.hidden),
        "self_attn.v_proj": (kv_out, spec.hidden),
        "self_attn.o_proj": (spec.hidden, q_out),
        "mlp.gate_proj": (spec.ffn, spec.hidden),
        "mlp.up_proj": (spec.ffn, spec.hidden),
        "mlp.down_proj": (spec.hidden, spec.ffn),
    }
    norm_sizes = {"input_layernorm": spec.hidden, "self_attn.attn_sub_norm": q_out,
                  "post_attention_layernorm": spec.hidden, "mlp.ffn_sub_norm": spec.ffn}
    sources = set()
    layers: Any = range(spec.layers)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc=f"converting {ck.dir.name}", unit="layer", file=sys.stderr, leave=False)
    for i in layers:
        pre = f"model.layers.{i}."
        for hf, gg in _NORMS:
            aliases = tuple(pre + a + ".weight" for a in _NORM_ALIASES.get(hf, ()))
            norm(pre + hf + ".weight", f"blk.{i}.{gg}.weight", norm_sizes[hf], aliases)
        for hf, gg in _PROJ:
            stem = pre + hf
            n_out, n_in = shapes[hf]
            w, source = _read_ternary(ck, spec, stem, n_out, n_in)
            sources.add(source)
            used.add(stem + ".weight")
            used.add(stem + ".weight_scale")
            gname = f"blk.{i}.{gg}.weight"
            if type == "i2_s":
                payload = encode_i2s(w.t, w.beta)
                # int8 view + raw_shape: GGUFWriter stores the raw type id as given and does not
                # try to derive a shape from the byte count (it only does that for uint8 data).
                writer.add_tensor(gname, payload.view(np.int8), raw_shape=(n_out, n_in), raw_dtype=I2S_TYPE_ID)
                continue
            if type == "f16":
                if _fp16_exact(w.beta):
                    values, scale = (w.t.astype(np.float32) * np.float32(w.beta)).astype(np.float16), None
                else:
                    values, scale = w.t.astype(np.float16), w.beta
                writer.add_tensor(gname, values, raw_dtype=Q.F16)
            else:
                qtype = Q.TQ2_0 if type == "tq2_0" else Q.TQ1_0
                payload, scale = _encode_tq(gguf, w, qtype, gname)
                writer.add_tensor(gname, payload, raw_dtype=qtype)
            if scale is not None:
                writer.add_tensor(f"blk.{i}.{gg}.scale", np.array([scale], dtype=np.float32), raw_dtype=Q.F32)

    unused = sorted(n for n in ck.tensors if n not in used and not n.endswith(_IGNORED_SUFFIXES))
    if unused:
        more = f" (and {len(unused) - 8} more)" if len(unused) > 8 else ""
        raise _format_error(
            f"{ck.dir}: unexpected tensors {unused[:8]}{more}: they are not part of a BitNetForCausalLM model "
            f"with num_hidden_layers={spec.layers}; check config.json"
        )
    return sources


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``convert`` arguments to ``parser`` (used by ``python -m bitnet convert``)."""
    parser.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("-o", "--outfile", type=Path, default=None,
                        help="output GGUF file (default: HF_DIR/ggml-model-TYPE.gguf)")
    parser.add_argument("--type", choices=OUTPUT_TYPES, default="tq2_0",
                        help="ternary weight encoding: tq2_0/tq1_0/f16 (upstream llama.cpp 'bitnet' arch) or "
                             "i2_s (bitnet.cpp 'bitnet-b1.58' dialect); default tq2_0")
    parser.add_argument("--embed-type", choices=EMBED_TYPES, default="f16",
                        help="token embedding encoding; default f16")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                   help="show progress bars on stderr even when it is not a terminal")
    g.add_argument("-q", "--quiet", dest="progress", action="store_const", const=False,
                   help="never show progress bars (default: shown only when stderr is a terminal)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a conversion from parsed arguments; returns a process exit code."""
    from . import _progress

    out = args.outfile if args.outfile is not None else Path(args.hf_dir) / f"ggml-model-{args.type}.gguf"
    try:
        path = convert_hf_to_gguf(args.hf_dir, out, type=args.type, embed_type=args.embed_type,
                                  progress=_progress.enabled(getattr(args, "progress", None)))
    except BitNetError as exc:
        print(f"bitnet convert: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bitnet.convert HF_DIR -o OUT.gguf --type ...``"""
    from .cli import EXIT_STATUS, _Parser   # usage errors exit 1 here too, as under `bitnet convert`

    parser = _Parser(prog="bitnet convert", description="Convert a Hugging Face BitNet checkpoint to GGUF.",
                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
