"""PyTorch glue: QAT ``BitLinear``, a reference ``BitNetTransformer``, export to GGUF, running
``BitLinear`` layers on the card, and the seed's ``BitNetModule`` / ``BitNetForCausalLM``.

What lives here, top to bottom:

* **Numerics in torch** (docs/NUMERICS.md): per-token absmax int8 activations, absmean ternary
  weights, the card's exact integer accumulation and ``y = (acc / s_x) * beta``, and the host
  side of the transformer in the engine's float order (RMSNorm mean summed in double, RoPE
  tables from the C library's ``powf``/``cosf``/``sinf``, glibc's ``expf`` reproduced bit for
  bit, correctly rounded ``sqrtf``, attention scores as 16-lane ordered fp32 dots, softmax sums
  and ``P V`` in position order, the output head as an ordered dot). A model in eval mode
  therefore computes the same numbers as the simulator, not just similar ones.
* :class:`BitLinear`: training mode quantises weights (absmean ternary) and activations
  (per-token absmax int8) with straight-through gradients; eval mode is the card.
* :class:`BitNetTransformer`: BitNet b1.58 (sub-norms, squared ReLU or SiLU, GQA, NeoX RoPE,
  tied embeddings) built from BitLinear; its state-dict names are those of Hugging Face
  ``BitNetForCausalLM``, its config takes a ``transformers.BitNetConfig``, and
  ``from_pretrained`` starts it from a Hugging Face BitNet checkpoint.
* :func:`export`: a BitNetTransformer or a Hugging Face ``BitNetForCausalLM`` to a GGUF model
  file, through a temporary packed HF checkpoint and :func:`bitnet.convert.convert_hf_to_gguf`.
* :func:`to_device`: every BitLinear of any module tree runs its eval matmul on a
  :class:`~bitnet.BitNet` device (``load_weights_from_array`` + ``matmul``).
* :class:`BitNetModule` and :class:`BitNetForCausalLM`: the seed API; a model file (or a HF
  checkpoint directory, converted once and cached) on a device, with ``generate`` and
  Hugging Face style ``.logits``.

torch is an optional dependency (``pip install "bitnet[torch]"``); ``import bitnet`` never
imports this module, ``bitnet.BitLinear`` and friends load it on first use.
"""
from __future__ import annotations

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError('bitnet.torch_api needs PyTorch, which is not installed: pip install "bitnet[torch]"',
                      name="torch") from _exc

import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from ._tokens import check_count, check_float, check_sampling, check_stop_tokens
from .core import BitNet, _run_interruptibly
from .errors import BitNetFileNotFoundError, BitNetValueError, ErrorCode

__all__ = [
    "BitLinear",
    "BitNetRMSNorm",
    "BitNetTransformer",
    "BitNetTransformerConfig",
    "BitNetOutput",
    "CausalLMOutput",
    "DeviceBitLinear",
    "BitNetModule",
    "BitNetForCausalLM",
    "export",
    "to_device",
    "save_pretrained",
    "resolve_model_file",
    "quantize_activations",
    "absmean_ternary",
]

logger = logging.getLogger("bitnet.torch")

PathLike = Union[str, "os.PathLike[str]"]

# An fp32 matmul of int8 codes and ternary weights is exact while every partial sum fits the
# 24-bit significand: |acc| <= 128 * K < 2^24. Beyond that the integer product runs in float64.
_FP32_EXACT_K = (1 << 24) // 128 - 1


def _invalid(msg: str) -> BitNetValueError:
    return BitNetValueError(ErrorCode.INVALID, msg)


# =============================================================================================
# Numerics (docs/NUMERICS.md) in torch
# =============================================================================================

def quantize_activations(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantisation of the rows of ``x`` (NUMERICS.md section 2).

    Parameters
    ----------
    x : torch.Tensor
        Float ``[..., K]``; computed in fp32.

    Returns
    -------
    q : torch.Tensor
        fp32 ``[..., K]`` holding the int8 codes ``clamp(round_half_even(x * s), -128, 127)``.
    s : torch.Tensor
        fp32 ``[..., 1]``: ``s = 127 / max(max|x|, 1e-5)``.
    """
    xf = x.detach().to(torch.float32)
    amax = xf.abs().amax(dim=-1, keepdim=True)
    s = torch.div(127.0, torch.clamp(amax, min=1e-5))
    q = torch.clamp(torch.round(xf * s), -128.0, 127.0)
    return q, s


def absmean_ternary(w: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """Absmean ternarisation of a weight matrix (NUMERICS.md section 1).

    ``beta = max(mean|W|, 1e-5)`` (mean accumulated in float64, rounded to fp32) and
    ``t = clamp(round_half_even(W / beta), -1, 1)`` (fp32 division), exactly as
    :func:`bitnet.convert.ternarise_absmean` computes it.

    Returns
    -------
    t : torch.Tensor
        int8 codes in {-1, 0, +1}, the shape of ``w``.
    beta : float
        The fp32 scale (as a Python float holding an fp32 value).
    """
    w32 = w.detach().to(torch.float32)
    mean = float(w32.abs().to(torch.float64).mean()) if w32.numel() else 0.0
    beta = np.float32(max(mean, 1e-5))
    t = torch.clamp(torch.round(w32 / torch.tensor(beta, dtype=torch.float32)), -1.0, 1.0).to(torch.int8)
    return t, float(beta)


def _integer_matmul(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``q @ t.T`` computed exactly (int8 codes x ternary codes); returned as float64."""
    k = q.shape[-1]
    dt = torch.float32 if k <= _FP32_EXACT_K else torch.float64
    return torch.matmul(q.to(dt), t.to(dt).t()).to(torch.float64)


def _card_output(acc: torch.Tensor, s: torch.Tensor, beta: float) -> torch.Tensor:
    """The card's output stage: ``y = ((float)acc / s) * beta`` in fp32, in that order."""
    return (acc.to(torch.float32) / s) * torch.tensor(beta, dtype=torch.float32)


def _sqrtf(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 square root (``sqrtf``). torch's own fp32 ``sqrt`` on CPU is not
    always correctly rounded; the double square root rounded to fp32 is (53 >= 2*24 + 2)."""
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def _rms_norm_exact(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in the engine's order (NUMERICS.md 3): the squares summed in float64 as 16
    partial sums (sum ``l`` takes the elements ``i = l (mod 16)`` in increasing ``i``), combined
    as ``s[l] += s[l+8]``, ``s[l] += s[l+4]``, ``s[l] += s[l+2]``, ``s[0] + s[1]``; the mean
    rounded to fp32, then ``r = 1 / sqrt(mean + eps)`` and ``w * (x * r)`` in fp32."""
    x = x.to(torch.float32)
    n = x.shape[-1]
    sq = x.to(torch.float64).square()
    # Zeros pad the last row of 16 (adding +0.0 to a sum of squares changes no bit); a CPU
    # cumsum down each lane is that lane's sequential sum.
    sq = torch.nn.functional.pad(sq, (0, (-n) % 16)).reshape(*x.shape[:-1], -1, 16)
    p = torch.cumsum(sq, dim=-2)[..., -1, :]
    p = p[..., :8] + p[..., 8:]
    p = p[..., :4] + p[..., 4:]
    p = p[..., :2] + p[..., 2:]
    ss = p[..., :1] + p[..., 1:]
    mean = (ss / x.shape[-1]).to(torch.float32)
    r = torch.div(1.0, _sqrtf(mean + torch.tensor(eps, dtype=torch.float32)))
    return w.to(torch.float32) * (x * r)


def _lane_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` over the last dimension as the kernels' ordered fp32 dot (NUMERICS.md 4).

    ``a`` is ``[..., M, D]``, ``b`` is ``[..., N, D]`` (leading dimensions broadcast); the result
    is ``[..., M, N]``. 16 partial sums, lane ``l`` taking elements ``i = l (mod 16)`` in
    increasing ``i`` (each product rounded, then added), combined as ``s[l] += s[l+8]``,
    ``s[l] += s[l+4]``, ``s[l] += s[l+2]``, ``s[0] + s[1]``.
    """
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    d = a.shape[-1]
    pad = (-d) % 16
    if pad:
        a = F.pad(a, (0, pad))
        b = F.pad(b, (0, pad))
    c = a.shape[-1] // 16
    a4 = a.reshape(*a.shape[:-1], c, 16)
    b4 = b.reshape(*b.shape[:-1], c, 16)
    lead = torch.broadcast_shapes(a4.shape[:-3], b4.shape[:-3])
    m, n = a4.shape[-3], b4.shape[-3]
    per_col = max(1, int(np.prod(lead, dtype=np.int64)) * m * 16)
    step = max(1, (1 << 22) // per_col)
    outs = []
    for n0 in range(0, n, step):
        bb = b4[..., n0:n0 + step, :, :]
        acc = torch.zeros(*lead, m, bb.shape[-3], 16, dtype=torch.float32, device=a.device)
        for j in range(c):
            acc = acc + a4[..., :, None, j, :] * bb[..., None, :, j, :]
        for w in (8, 4, 2, 1):
            acc = acc[..., :w] + acc[..., w:2 * w]
        outs.append(acc[..., 0])
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


# ---- RoPE tables, computed as the engine computes them --------------------------------------

def _libm():
    """``powf``, ``cosf``, ``sinf`` of the C library (what the engine's ``std::pow``/``std::cos``
    /``std::sin`` on floats call), or None where ctypes cannot find it."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("m") or "libm.so.6"
        lib = ctypes.CDLL(name)
        fns = []
        for fn_name, nargs in (("powf", 2), ("cosf", 1), ("sinf", 1)):
            fn = getattr(lib, fn_name)
            fn.restype = ctypes.c_float
            fn.argtypes = [ctypes.c_float] * nargs
            fns.append(fn)
        return tuple(fns)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        return None


_LIBM: Any = False            # False: not looked up yet
_ROPE_CACHE: Dict[Tuple[float, int], Tuple[torch.Tensor, torch.Tensor]] = {}


def _rope_tables(theta: float, dim: int, n_pos: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos``/``sin`` tables ``[n_pos, dim/2]`` (NUMERICS.md 4, RoPE).

    ``inv_freq_i = 1 / powf(theta, (2i)/dim)``, ``angle = pos * inv_freq_i`` in fp32, then
    ``cosf``/``sinf``. With the C library's functions the tables equal the engine's bit for bit;
    without ctypes the functions are evaluated in double and rounded (equal except in rare
    last-bit cases).
    """
    global _LIBM
    if _LIBM is False:
        _LIBM = _libm()
    key = (float(np.float32(theta)), int(dim))
    have = _ROPE_CACHE.get(key)
    if have is not None and have[0].shape[0] >= n_pos:
        return have[0][:n_pos], have[1][:n_pos]
    n_alloc = max(n_pos, 64, 2 * (have[0].shape[0] if have is not None else 0))
    half = dim // 2
    theta32 = np.float32(theta)
    expo = np.arange(0, 2 * half, 2, dtype=np.float32) / np.float32(dim)
    if _LIBM:
        powf, cosf, sinf = _LIBM
        inv = np.array([np.float32(1.0) / np.float32(powf(theta32, e)) for e in expo], dtype=np.float32)
    else:  # pragma: no cover
        inv = np.array([np.float32(1.0) / np.float32(float(theta32) ** float(e)) for e in expo], dtype=np.float32)
    pos = np.arange(n_alloc, dtype=np.float32)
    angle = (pos[:, None] * inv[None, :]).astype(np.float32)        # fp32 products
    if _LIBM:
        cos = np.array([cosf(a) for a in angle.reshape(-1).tolist()], dtype=np.float32).reshape(angle.shape)
        sin = np.array([sinf(a) for a in angle.reshape(-1).tolist()], dtype=np.float32).reshape(angle.shape)
    else:  # pragma: no cover
        cos = np.cos(angle.astype(np.float64)).astype(np.float32)
        sin = np.sin(angle.astype(np.float64)).astype(np.float32)
    tables = (torch.from_numpy(cos), torch.from_numpy(sin))
    _ROPE_CACHE[key] = tables
    return tables[0][:n_pos], tables[1][:n_pos]


# ---- expf, as the engine's C library computes it ---------------------------------------------
#
# The engine calls ``std::exp(float)``, i.e. glibc's ``expf``, which is not correctly rounded
# (about 1 in 2000 results differs from ``exp`` evaluated in double and rounded). To give the
# same bits, ``_expf`` evaluates glibc's published algorithm (since 2.27, from Arm's optimized
# routines) in float64: ``x * 32/ln2 = k + r``, ``2^(k/32)`` from a 32-entry table, a cubic in
# ``r``, one rounding to fp32. tests/test_torch_numerics.py checks it against the C library.

_EXP2F_TAB = (
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
)   # bits of 2^(i/32) minus i << 47: adding k << 47 then also sets the exponent of 2^(k/32)
_EXPF_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * 32
_EXPF_SHIFT = float.fromhex("0x1.8p+52")
_EXPF_C = (float.fromhex("0x1.c6af84b912394p-5") / 32 ** 3, float.fromhex("0x1.ebfce50fac4f3p-3") / 32 ** 2,
           float.fromhex("0x1.62e42ff0c52d6p-1") / 32)
_EXPF_OVERFLOW = float.fromhex("0x1.62e42ep6")      # above: +inf
_EXPF_UNDERFLOW = float.fromhex("-0x1.9fe368p6")    # below: 0
_EXPF_TAB_T: Optional[torch.Tensor] = None


def _expf(x: torch.Tensor) -> torch.Tensor:
    """``expf`` of an fp32 tensor, bit-identical to glibc's (see above)."""
    global _EXPF_TAB_T
    if _EXPF_TAB_T is None:
        _EXPF_TAB_T = torch.tensor(_EXP2F_TAB, dtype=torch.int64)
    x = x.to(torch.float32)
    z = _EXPF_INV_LN2_N * x.to(torch.float64)
    kd = z + _EXPF_SHIFT                       # round z to an integer k (ties to even) ...
    ki = kd.view(torch.int64)                  # ... which sits in the low bits of kd
    r = z - (kd - _EXPF_SHIFT)                 # |r| <= 1/2
    s = (_EXPF_TAB_T.to(x.device)[ki & 31] + (ki << 47)).view(torch.float64)   # 2^(k/32)
    c0, c1, c2 = _EXPF_C
    y = (c0 * r + c1) * (r * r) + (c2 * r + 1.0)
    y = (y * s).to(torch.float32)
    y = torch.where(x > _EXPF_OVERFLOW, torch.full_like(y, float("inf")), y)
    y = torch.where(x < _EXPF_UNDERFLOW, torch.zeros_like(y), y)
    return torch.where(torch.isnan(x), x, y)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE on ``x [B, H, T, hd]`` with tables ``[B, 1, T, hd/2]``: element ``i`` pairs with
    ``i + hd/2``; ``a' = a*cos + (-b)*sin``, ``b' = b*cos + a*sin`` (engine order)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos + (-b) * sin, b * cos + a * sin), dim=-1)


def _attention_exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention in the engine's order (NUMERICS.md 4, Attention).

    ``q, k, v [B, H, T, hd]`` (k/v already expanded for GQA), ``allowed [B, 1, T, T]`` bool.
    Scores are ordered 16-lane dots times ``1/sqrt(hd)``; ``expf(score - max)``; the sum is accumulated in
    position order; ``o += p_t * v_t`` in position order. Masked keys contribute exact zeros.
    """
    hd = q.shape[-1]
    scale = torch.div(torch.tensor(1.0, dtype=torch.float32), _sqrtf(torch.tensor(float(hd), dtype=torch.float32)))
    scores = _lane_dot(q, k) * scale                                    # [B, H, T, T]
    scores = scores.masked_fill(~allowed, float("-inf"))
    mx = scores.amax(dim=-1, keepdim=True)
    e = _expf(scores - mx)
    t_len = k.shape[-2]
    total = torch.zeros(e.shape[:-1], dtype=torch.float32, device=e.device)
    for t in range(t_len):
        total = total + e[..., t]
    p = e / total[..., None]
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for t in range(t_len):
        o = o + p[..., t, None] * v[..., None, t, :]
    return o


def _relu2(g: torch.Tensor) -> torch.Tensor:
    r = torch.relu(g)
    return r * r


def _silu_exact(g: torch.Tensor) -> torch.Tensor:
    """``g / (1 + expf(-g))`` in fp32, as the engine computes SiLU."""
    e = _expf(-g)
    return g / (1.0 + e)


# =============================================================================================
# BitLinear
# =============================================================================================

class BitLinear(nn.Module):
    """A BitNet b1.58 linear layer for quantisation-aware training and exact deployment.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output rows.
    bias : bool
        Add a learnable bias (computed on the host; the card has none).
    device, dtype
        Passed to the weight's factory (the master weight; fp32 by default).

    Notes
    -----
    The float master weight ``W [out, in]`` is trained. In both modes it is ternarised by
    absmean (``beta = max(mean|W|, 1e-5)``, ``t = clamp(round(W / beta), -1, 1)``) and the input
    rows are quantised to int8 by per-token absmax (``s = 127 / max|x|``).

    * **Training** (``module.train()``): ``y = dequant(q) @ (t * beta).T`` with straight-through
      estimators, so gradients reach ``W`` and ``x`` as if the quantisers were the identity.
    * **Eval** (``module.eval()``): exactly the card (docs/NUMERICS.md): the integer
      ``acc = q @ t.T`` computed exactly, then ``y = (acc / s) * beta`` in fp32, in that order.
      The outputs equal :meth:`bitnet.BitNet.matmul` on a slot loaded with ``t`` and ``beta``
      bit for bit. If gradients are enabled, they are the straight-through ones.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        in_features = check_count(in_features, "in_features", 1)
        out_features = check_count(out_features, "out_features", 1)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {type(bias).__name__}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self._ternary_cache: Optional[Tuple[Tuple[int, int], torch.Tensor, float]] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (the absmean quantiser is scale-invariant)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def _weight_key(self) -> Tuple[int, int]:
        return (self.weight.data_ptr(), self.weight._version)

    def ternary(self) -> Tuple[torch.Tensor, float]:
        """The deployed weight: int8 codes ``t [out, in]`` and the fp32 scale ``beta``.

        Cached until the weight changes (any in-place update, e.g. an optimiser step).
        """
        key = self._weight_key()
        cache = self._ternary_cache
        if cache is None or cache[0] != key:
            t, beta = absmean_ternary(self.weight)
            cache = (key, t, beta)
            self._ternary_cache = cache
        return cache[1], cache[2]

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"BitLinear input must be a torch.Tensor, not {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"BitLinear input must be a float tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise _invalid(f"BitLinear input must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}")

    def quantized_forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The card's computation on ``x [..., in]``, whatever the module's mode (no gradients).

        Returns
        -------
        y : torch.Tensor
            fp32 ``[..., out]``: ``(acc / s) * beta`` (without the bias).
        acc : torch.Tensor
            The exact integer accumulators ``q @ t.T`` as int64 ``[..., out]``.
        s : torch.Tensor
            The activation scales, fp32 ``[..., 1]``.
        """
        self._check_input(x)
        with torch.no_grad():
            t, beta = self.ternary()
            q, s = quantize_activations(x)
            acc = _integer_matmul(q, t)
            y = _card_output(acc, s, beta)
        return y, acc.to(torch.int64), s

    def _ste_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        t, beta = self.ternary()
        wq = t.to(w.dtype) * torch.tensor(beta, dtype=w.dtype, device=w.device)
        w_ste = w + (wq - w).detach()
        xf = x.to(w.dtype)
        q, s = quantize_activations(xf)
        xq = q / s
        x_ste = xf + (xq.to(xf.dtype) - xf).detach()
        return F.linear(x_ste, w_ste, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: fake-quantised linear with straight-through gradients. Eval: the card."""
        self._check_input(x)
        if self.training:
            return self._ste_forward(x)
        y, _, _ = self.quantized_forward(x)
        if self.bias is not None:
            y = y + self.bias.detach().to(torch.float32)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            ste = self._ste_forward(x)
            y = y + (ste - ste.detach()).to(torch.float32)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


class BitNetRMSNorm(nn.Module):
    """RMSNorm with a learnable weight: ``w * (x / sqrt(mean(x^2) + eps))``.

    Eval mode follows the engine's order (mean of squares accumulated in float64 then rounded
    to fp32); training mode is the plain fp32 formula.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(check_count(hidden_size, "hidden_size", 1)))
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x.to(torch.float32)
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        with torch.no_grad():
            return _rms_norm_exact(x, self.weight, self.eps)


# =============================================================================================
# BitNetTransformer
# =============================================================================================

_ACTIVATIONS = {"relu2": "relu2", "relu_squared": "relu2", "silu": "silu", "swish": "silu"}


@dataclass
class BitNetTransformerConfig:
    """The shape of a :class:`BitNetTransformer`; field names are those of Hugging Face
    ``BitNetConfig`` (so its ``config.json`` keys), with small defaults.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and ``num_key_value_heads``
    to ``num_attention_heads``. ``hidden_act`` is ``"relu2"`` (BitNet b1.58) or ``"silu"``.
    """

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            setattr(self, name, check_count(getattr(self, name), f"config.{name}", 1))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.num_key_value_heads = check_count(self.num_key_value_heads, "config.num_key_value_heads", 1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise _invalid(f"config.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                           f"config.num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise _invalid(f"config.hidden_size ({self.hidden_size}) is not a multiple of "
                               f"config.num_attention_heads ({self.num_attention_heads}); set head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.head_dim = check_count(self.head_dim, "config.head_dim", 2)
        if self.head_dim % 2:
            raise _invalid(f"config.head_dim must be even for rotary embeddings, got {self.head_dim}")
        act = _ACTIVATIONS.get(str(self.hidden_act).lower()) if isinstance(self.hidden_act, str) else None
        if act is None:
            raise _invalid(f"config.hidden_act {self.hidden_act!r} is not supported (expected 'relu2' or 'silu')")
        self.hidden_act = act
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise _invalid(f"config.{name} must be a positive number, got {v!r}")
            setattr(self, name, float(v))
        if self.rope_theta <= 1.0:
            raise _invalid(f"config.rope_theta must be > 1, got {self.rope_theta}")
        self.tie_word_embeddings = bool(self.tie_word_embeddings)

    @classmethod
    def from_any(cls, config: Any) -> "BitNetTransformerConfig":
        """Accept this class, a mapping with ``config.json`` keys, or any object with those
        attributes (``transformers.BitNetConfig``). Unknown keys are ignored."""
        if isinstance(config, cls):
            return config
        names = {f.name for f in fields(cls)}
        if isinstance(config, Mapping):
            src = dict(config)
        elif config is not None and hasattr(config, "hidden_size"):
            src = {n: getattr(config, n) for n in names if hasattr(config, n)}
            if hasattr(config, "rope_parameters"):
                src["rope_parameters"] = getattr(config, "rope_parameters")
        else:
            raise TypeError("config must be a BitNetTransformerConfig, a dict of config.json keys or a "
                            f"transformers BitNetConfig, not {type(config).__name__}")
        rp = src.get("rope_parameters")
        if src.get("rope_theta") is None and isinstance(rp, Mapping) and rp.get("rope_theta") is not None:
            src["rope_theta"] = rp["rope_theta"]
        if isinstance(rp, Mapping) and rp.get("rope_type", "default") != "default":
            raise _invalid(f"config.rope_parameters {dict(rp)!r}: only plain RoPE (rope_type 'default') is supported")
        if src.get("rope_theta") is None:
            src.pop("rope_theta", None)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = src.get(key)
            if isinstance(v, (list, tuple)):
                src[key] = v[0] if v else None
        kwargs = {k: v for k, v in src.items() if k in names}
        for opt in ("num_key_value_heads", "head_dim"):
            if opt in kwargs and kwargs[opt] is None:
                del kwargs[opt]
        return cls(**kwargs)

    def to_hf_dict(self) -> Dict[str, Any]:
        """``config.json`` of the equivalent Hugging Face packed BitNet checkpoint."""
        d: Dict[str, Any] = {
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": "float32",
            "quantization_config": _QUANT_CONFIG,
        }
        if self.head_dim != self.hidden_size // self.num_attention_heads or self.hidden_size % self.num_attention_heads:
            d["head_dim"] = self.head_dim
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, key) is not None:
                d[key] = int(getattr(self, key))
        return d


_QUANT_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}


@dataclass
class BitNetOutput:
    """Output of :class:`BitNetTransformer` (Hugging Face ``CausalLMOutput`` field names)."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None

    def __getitem__(self, key: Union[int, str]) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        items = [x for x in (self.loss, self.logits) if x is not None]
        return items[key]


class _Attention(nn.Module):
    def __init__(self, c: BitNetTransformerConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = BitLinear(c.hidden_size, qd)
        self.k_proj = BitLinear(c.hidden_size, kvd)
        self.v_proj = BitLinear(c.hidden_size, kvd)
        self.o_proj = BitLinear(qd, c.hidden_size)
        self.attn_sub_norm = BitNetRMSNorm(qd, c.rms_norm_eps)

    def forward(self, a: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, _ = a.shape
        hd, group = self.head_dim, self.n_head // self.n_kv
        q = self.q_proj(a).view(b, t, self.n_head, hd).transpose(1, 2)      # [B, H, T, hd]
        k = self.k_proj(a).view(b, t, self.n_kv, hd).transpose(1, 2)        # [B, Hkv, T, hd]
        v = self.v_proj(a).view(b, t, self.n_kv, hd).transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if group > 1:                                                       # kv head = head // group
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        if self.training:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            o = _attention_exact(q, k, v, allowed)
        o = o.transpose(1, 2).reshape(b, t, self.n_head * hd)
        return self.o_proj(self.attn_sub_norm(o))


class _MLP(nn.Module):
    def __init__(self, c: BitNetTransformerConfig) -> None:
        super().__init__()
        self.act = c.hidden_act
        self.gate_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.up_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.down_proj = BitLinear(c.intermediate_size, c.hidden_size)
        self.ffn_sub_norm = BitNetRMSNorm(c.intermediate_size, c.rms_norm_eps)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_proj(m), self.up_proj(m)
        if self.act == "relu2":
            a = _relu2(g)
        else:
            a = F.silu(g) if self.training else _silu_exact(g)
        return self.down_proj(self.ffn_sub_norm(a * u))


class _DecoderLayer(nn.Module):
    def __init__(self, c: BitNetTransformerConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(c)
        self.mlp = _MLP(c)
        self.input_layernorm = BitNetRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = BitNetRMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, allowed)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Backbone(nn.Module):
    def __init__(self, c: BitNetTransformerConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = BitNetRMSNorm(c.hidden_size, c.rms_norm_eps)


def _as_ids(input_ids: Any, name: str = "input_ids") -> torch.Tensor:
    """Token ids as a LongTensor (1-D or 2-D), with clear errors."""
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.detach().cpu()
    elif isinstance(input_ids, (list, tuple, np.ndarray)):
        arr = np.asarray(input_ids)
        if arr.dtype == object:
            raise TypeError(f"{name} must be a rectangular array of integer token ids (use attention_mask for padding)")
        ids = torch.from_numpy(arr) if arr.size else torch.zeros(arr.shape, dtype=torch.long)
    else:
        raise TypeError(f"{name} must be a torch.Tensor (or a list / NumPy array) of token ids, not {type(input_ids).__name__}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() not in (1, 2):
        raise _invalid(f"{name} must be 1-D [seq] or 2-D [batch, seq], got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise _invalid(f"{name} is empty; pass at least one token id")
    if int(ids.min()) < 0:
        raise _invalid(f"{name} holds a negative token id ({int(ids.min())})")
    return ids.to(torch.long)


def _as_labels(labels: Any) -> torch.Tensor:
    lab = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if lab.dtype == torch.bool or lab.is_floating_point() or lab.is_complex():
        raise TypeError(f"labels must hold integer token ids (-100 = ignore), got dtype {lab.dtype}")
    return lab.detach().cpu().to(torch.long)


def _as_mask(attention_mask: Any, shape: Tuple[int, ...]) -> Optional[torch.Tensor]:
    if attention_mask is None:
        return None
    if isinstance(attention_mask, torch.Tensor):
        m = attention_mask
    else:
        arr = np.asarray(attention_mask)
        if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
            raise TypeError(f"attention_mask must be a tensor or array of 0/1, not {type(attention_mask).__name__} "
                            f"(dtype {arr.dtype})")
        m = torch.as_tensor(arr)
    m = m.detach().cpu()
    if m.is_floating_point() or m.is_complex():
        raise TypeError(f"attention_mask must hold 0/1 integers or booleans, got dtype {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise _invalid(f"attention_mask has shape {tuple(m.shape)}, but input_ids has shape {tuple(shape)}")
    if m.numel() and (int(m.min()) < 0 or int(m.max()) > 1):
        raise _invalid("attention_mask must hold only 0 and 1")
    return m.to(torch.bool)


def _row_spans(mask: Optional[torch.Tensor], b: int, t: int) -> List[Tuple[int, int]]:
    """(start, length) of each row's tokens: one contiguous run of ones (left or right padding)."""
    if mask is None:
        return [(0, t)] * b
    spans = []
    for i in range(b):
        nz = torch.nonzero(mask[i]).reshape(-1)
        if nz.numel() == 0:
            raise _invalid(f"attention_mask[{i}] is all zeros: row {i} has no tokens")
        s, e = int(nz[0]), int(nz[-1]) + 1
        if e - s != nz.numel():
            raise _invalid(f"attention_mask[{i}] is not one contiguous run of ones (only left or right padding is supported)")
        spans.append((s, e - s))
    return spans


class BitNetTransformer(nn.Module):
    """A BitNet b1.58 decoder built from :class:`BitLinear`, for training and exact deployment.

    Parameters
    ----------
    config : BitNetTransformerConfig, dict or transformers.BitNetConfig
        The model shape. The architecture is that of Hugging Face ``BitNetForCausalLM``
        (microsoft/bitnet-b1.58-2B-4T): RMSNorm, q/k/v BitLinears, NeoX RoPE, GQA attention,
        attention sub-norm, o BitLinear; RMSNorm, gate/up BitLinears, ``relu(g)^2 * u`` (or
        SiLU), FFN sub-norm, down BitLinear; final RMSNorm; tied embedding head (an untied
        fp32 ``lm_head`` when ``tie_word_embeddings`` is false; such a model cannot be exported).

    Notes
    -----
    Parameter names equal the Hugging Face ones (``model.layers.0.self_attn.q_proj.weight``
    ...), so a HF master-weight checkpoint's state dict loads with ``load_state_dict``.

    In **training** mode the forward pass is ordinary fp32 PyTorch with fake-quantised
    BitLinears. In **eval** mode it is the engine's computation, operation by operation and in
    the engine's float order (docs/NUMERICS.md), so that the exported model on the simulator
    or the card gives the same logits (measured bit-identical on the test models) and the same
    greedy tokens.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = BitNetTransformerConfig.from_any(config)
        c = self.config
        self.model = _Backbone(c)
        self.lm_head: Optional[nn.Linear] = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) embeddings and projections, unit norm weights."""
        std = self.config.initializer_range
        for mod in self.modules():
            if isinstance(mod, (BitLinear, nn.Linear)):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, BitNetRMSNorm):
                nn.init.ones_(mod.weight)

    def head_weight(self) -> torch.Tensor:
        """The output head ``[vocab, hidden]`` (the token embedding when tied)."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: Any, attention_mask: Any = None, labels: Any = None) -> BitNetOutput:
        """Logits of every position.

        Parameters
        ----------
        input_ids : LongTensor ``[B, T]`` (or ``[T]``)
        attention_mask : ``[B, T]`` of 0/1, optional
            Marks real tokens; rows may be left- or right-padded. Positions are counted over
            real tokens only, so a padded row gives the logits of the unpadded one.
        labels : LongTensor ``[B, T]``, optional
            Targets for the next-token cross-entropy (shifted inside, ``-100`` ignored); the
            mean loss is returned in ``.loss``.

        Returns
        -------
        BitNetOutput
            ``.logits`` fp32 ``[B, T, vocab]`` (``[T, vocab]`` for 1-D input), ``.loss``.
        """
        ids = _as_ids(input_ids)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        b, t = ids.shape
        c = self.config
        if int(ids.max()) >= c.vocab_size:
            raise _invalid(f"input_ids holds token id {int(ids.max())}, outside the vocabulary of {c.vocab_size}")
        mask = _as_mask(attention_mask, tuple(ids.shape))
        dev = self.model.embed_tokens.weight.device
        if mask is None:
            pos = torch.arange(t).expand(b, t)
            keymask = torch.ones(b, t, dtype=torch.bool)
        else:
            _row_spans(mask, b, t)
            pos = (torch.cumsum(mask.to(torch.long), dim=1) - 1).clamp(min=0)
            keymask = mask
        n_pos = int(pos.max()) + 1
        if n_pos > c.max_position_embeddings:
            raise _invalid(f"sequence of {n_pos} positions exceeds max_position_embeddings={c.max_position_embeddings}")
        cos_t, sin_t = _rope_tables(c.rope_theta, c.head_dim, n_pos)
        cos = cos_t[pos][:, None].to(dev)                                   # [B, 1, T, hd/2]
        sin = sin_t[pos][:, None].to(dev)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        allowed = (causal[None] & keymask[:, None, :]) | torch.eye(t, dtype=torch.bool)[None]
        allowed = allowed[:, None].to(dev)                                  # [B, 1, T, T]

        # Eval mode is the deployment computation: no gradients through it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.training):
            h = self.model.embed_tokens(ids.to(dev)).to(torch.float32)
            for layer in self.model.layers:
                h = layer(h, cos, sin, allowed)
            h = self.model.norm(h)
            if self.training:
                logits = F.linear(h, self.head_weight())
            else:
                logits = _lane_dot(h, self.head_weight())
        loss = None
        if labels is not None:
            lab = _as_labels(labels)
            if squeeze and lab.dim() == 1:
                lab = lab[None]
            if tuple(lab.shape) != (b, t):
                raise _invalid(f"labels has shape {tuple(lab.shape)}, expected {(b, t)}")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, c.vocab_size), lab[:, 1:].reshape(-1).to(dev),
                                   ignore_index=-100)
        return BitNetOutput(logits=logits[0] if squeeze else logits, loss=loss)

    @torch.no_grad()
    def generate(self, input_ids: Any, max_new_tokens: int = 20, *, eos_token_id: Any = None,
                 pad_token_id: Optional[int] = None, attention_mask: Any = None) -> torch.Tensor:
        """Greedy generation in PyTorch (recomputing the whole sequence each step).

        Returns the prompt plus new tokens (the Hugging Face convention), ``[B, T + n]``. A row
        that emitted ``eos_token_id`` (default: ``config.eos_token_id``; ``[]`` for none) is
        padded with ``pad_token_id`` (default: the config's, else the EOS id, else 0). Call
        ``model.eval()`` first to get the tokens the exported model gives on the card.
        """
        ids = _as_ids(input_ids)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        n = check_count(max_new_tokens, "max_new_tokens", 0)
        mask = _as_mask(attention_mask, tuple(ids.shape))
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        stops = check_stop_tokens(eos_token_id, [] if self.config.eos_token_id is None else [self.config.eos_token_id])
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else (stops[0] if stops else 0)
        b = ids.shape[0]
        done = torch.zeros(b, dtype=torch.bool)
        for _ in range(n):
            logits = self.forward(ids, attention_mask=mask).logits[:, -1]
            nxt = torch.argmax(logits, dim=-1).cpu()
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool)], dim=1)
            if stops:
                done = done | torch.isin(nxt, torch.tensor(stops))
                if bool(done.all()):
                    break
        return ids[0] if squeeze else ids

    def save_pretrained(self, directory: PathLike) -> Path:
        """Write the model as a Hugging Face packed BitNet checkpoint (see :func:`save_pretrained`)."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, source: Union[PathLike, nn.Module]) -> "BitNetTransformer":
        """A BitNetTransformer holding a Hugging Face BitNet model, to fine-tune or to compare.

        Parameters
        ----------
        source : path or transformers.BitNetForCausalLM
            A checkpoint directory (``config.json`` + ``*.safetensors``: packed codes with
            ``weight_scale`` in either convention, or float master weights; read with
            :mod:`bitnet.convert`'s reader, transformers is not needed), or a loaded model.

        Returns
        -------
        BitNetTransformer
            In eval mode. Master weights are loaded as they are. A packed projection ``(t, beta)``
            becomes the master weight ``W = t * beta / m`` (``m`` = fraction of non-zero codes),
            whose absmean ternarisation gives back exactly ``t`` and ``beta``: the model computes
            what the checkpoint computes, and training continues from there.
        """
        if isinstance(source, nn.Module):
            cfg, tensors, ternary = _load_from_hf_model(source)
        elif isinstance(source, (str, os.PathLike)):
            cfg, tensors, ternary = _load_from_hf_dir(Path(source))
        else:
            raise TypeError(f"source must be a checkpoint directory or a transformers BitNetForCausalLM, "
                            f"not {source.__class__.__name__}")
        model = cls(cfg)
        state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}
        for stem, (t, beta) in ternary.items():
            state[stem + ".weight"] = torch.from_numpy(_master_from_ternary(t, beta))
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if k != "lm_head.weight" or model.lm_head is not None]
        if missing or unexpected:
            raise _invalid(f"the checkpoint does not match a BitNet model of its config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        return model.eval()


# =============================================================================================
# Export: HF packed checkpoint, then bitnet.convert
# =============================================================================================

_PROJ_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _pack_rows(t: np.ndarray) -> np.ndarray:
    from .models import _pack_rows as pack

    return pack(np.asarray(t, dtype=np.int8))


def _module_ternary(module: nn.Module, name: str) -> Tuple[np.ndarray, float]:
    """(codes int8 [out, in], beta) of a projection of a BitNetTransformer or a HF model."""
    if isinstance(module, DeviceBitLinear):
        module = module.inner
    if isinstance(module, BitLinear):
        t, beta = module.ternary()
        return t.cpu().numpy(), beta
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise TypeError(f"{name}: {type(module).__name__} has no 2-D weight; cannot export it as a ternary projection")
    ws = getattr(module, "weight_scale", None)
    if w.dtype == torch.uint8:
        # transformers' BitLinear: packed codes, y = acc / (s_x * weight_scale) -> beta = 1 / weight_scale
        from .convert import unpack_hf_weights

        n_out = int(getattr(module, "out_features", w.shape[0] * 4))
        t = unpack_hf_weights(w.detach().cpu().numpy(), n_out)
        ws0 = np.float32(ws.detach().to(torch.float32).reshape(-1)[0])
        return t, float(np.float32(np.float32(1.0) / ws0))
    if getattr(module, "online_quant", True) is False and isinstance(ws, torch.Tensor):
        # AutoBitLinear offline: weight holds the unpacked codes, y = acc / s_x * weight_scale
        wf = w.detach().to(torch.float32)
        if not bool(((wf == -1) | (wf == 0) | (wf == 1)).all()):
            raise _invalid(f"{name}: an offline AutoBitLinear must hold ternary codes in .weight")
        return wf.to(torch.int8).cpu().numpy(), float(np.float32(ws.detach().to(torch.float32).reshape(-1)[0]))
    if not hasattr(module, "online_quant"):
        logger.warning("%s: %s is not a BitNet linear layer; ternarising its float weight by absmean",
                       name, type(module).__name__)
    t, beta = absmean_ternary(w)          # master weights (AutoBitLinear online, plain Linear)
    return t.cpu().numpy(), beta


def _hf_layers(model: nn.Module) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or getattr(inner, "embed_tokens", None) is None:
        raise TypeError(f"cannot export a {type(model).__name__}: expected a BitNetTransformer or a Hugging Face "
                        "BitNetForCausalLM (with .model.embed_tokens and .model.layers)")
    return layers


def _checkpoint_of(model: nn.Module) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(config.json dict, tensors) of the packed HF checkpoint equivalent to ``model``."""
    if isinstance(model, BitNetTransformer):
        cfg = model.config.to_hf_dict()
        tied = model.config.tie_word_embeddings
    else:
        hf_cfg = getattr(model, "config", None)
        if hf_cfg is None or not hasattr(hf_cfg, "to_dict") or getattr(hf_cfg, "model_type", None) != "bitnet":
            raise TypeError(f"cannot export a {type(model).__name__}: expected a BitNetTransformer or a Hugging Face "
                            "BitNetForCausalLM (config.model_type 'bitnet')")
        cfg = hf_cfg.to_dict()
        cfg["architectures"] = ["BitNetForCausalLM"]
        cfg["quantization_config"] = dict(_QUANT_CONFIG)
        cfg["torch_dtype"] = "float32"
        cfg.pop("dtype", None)
        tied = bool(cfg.get("tie_word_embeddings", False))
    if not tied:
        raise _invalid("the model has an untied output head (tie_word_embeddings=False); the BitNet model file always "
                       "uses the token embedding as the output head, so it cannot be exported")
    layers = _hf_layers(model)
    proj_modules: Dict[str, nn.Module] = {}
    for i, layer in enumerate(layers):
        for p in _PROJ_NAMES:
            mod = layer.get_submodule(p)
            proj_modules[f"model.layers.{i}.{p}"] = mod
    tensors: Dict[str, np.ndarray] = {}
    for stem, mod in proj_modules.items():
        t, beta = _module_ternary(mod, stem)
        if not (np.isfinite(beta) and beta > 0):
            raise _invalid(f"{stem}: weight scale {beta!r} must be finite and > 0")
        tensors[stem + ".weight"] = _pack_rows(t)
        tensors[stem + ".weight_scale"] = np.array([beta], dtype=np.float32)
    skip_prefixes = tuple(s + "." for s in proj_modules)
    for name, value in model.state_dict().items():
        if name.startswith(skip_prefixes) or name == "lm_head.weight" or name.endswith("rotary_emb.inv_freq"):
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise _invalid(f"state_dict entry {name!r} ({getattr(value, 'dtype', type(value))}) is not part of a BitNet model")
        tensors[name] = np.ascontiguousarray(value.detach().to(torch.float32).cpu().numpy())
    return cfg, tensors


def _master_from_ternary(t: np.ndarray, beta: float) -> np.ndarray:
    """A float master weight whose absmean ternarisation is exactly ``(t, beta)``.

    ``W = t * w`` with ``w = beta / m`` (``m`` = fraction of non-zero codes), so that
    ``mean|W| ~ beta`` and ``round(W / beta) = round(t / m)`` clamps back to ``t``; one element
    absorbs the rounding left over, so that the fp32 mean is exactly ``beta``.
    """
    t = np.asarray(t, dtype=np.int8)
    beta32 = np.float32(beta)
    nz = np.flatnonzero(t)
    if nz.size == 0:
        return np.zeros(t.shape, dtype=np.float32)
    w = np.float32(float(beta32) * t.size / nz.size)
    master = t.astype(np.float32) * w
    flat = master.reshape(-1)
    e = int(nz[0])
    base = np.float32(w + (float(beta32) * t.size - float(w) * nz.size))      # the leftover on one element
    for k in range(8):
        for cand in {np.float32(base + np.float32(k) * np.spacing(base)), np.float32(base - np.float32(k) * np.spacing(base))}:
            flat[e] = np.float32(np.sign(t.reshape(-1)[e])) * cand
            t2, beta2 = absmean_ternary(torch.from_numpy(master))
            if np.float32(beta2) == beta32 and np.array_equal(t2.numpy(), t):
                return master
    logger.warning("ternary weight with beta=%g re-quantises to beta=%g", float(beta32), beta2)  # pragma: no cover
    return master


def _load_from_hf_dir(path: Path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], Dict[str, Tuple[np.ndarray, float]]]:
    from .convert import _NORM_ALIASES, _Checkpoint, _read_spec, _read_ternary

    if not path.is_dir():
        raise BitNetFileNotFoundError(ErrorCode.FILE, f"{path}: not a checkpoint directory (it does not exist or is a file)")
    spec, cfg, _ = _read_spec(path)
    ck = _Checkpoint(path)
    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    shapes = {"self_attn.q_proj": (q_out, spec.hidden), "self_attn.k_proj": (kv_out, spec.hidden),
              "self_attn.v_proj": (kv_out, spec.hidden), "self_attn.o_proj": (spec.hidden, q_out),
              "mlp.gate_proj": (spec.ffn, spec.hidden), "mlp.up_proj": (spec.ffn, spec.hidden),
              "mlp.down_proj": (spec.hidden, spec.ffn)}
    ternary: Dict[str, Tuple[np.ndarray, float]] = {}
    for i in range(spec.layers):
        for proj, (n_out, n_in) in shapes.items():
            stem = f"model.layers.{i}.{proj}"
            if ck.ref(stem + ".weight").dtype == "U8":
                w, _ = _read_ternary(ck, spec, stem, n_out, n_in)
                ternary[stem] = (w.t, w.beta)
    aliases = {f"model.layers.{i}.{alias}.weight": f"model.layers.{i}.{name}.weight"
               for i in range(spec.layers) for name, alts in _NORM_ALIASES.items() for alias in alts}
    tensors: Dict[str, np.ndarray] = {}
    for name in ck.tensors:
        if name.endswith(".weight_scale") or name.endswith(".rotary_emb.inv_freq"):
            continue
        if name.endswith(".weight") and name[: -len(".weight")] in ternary:
            continue
        tensors[aliases.get(name, name)] = ck.read(name).astype(np.float32)
    return cfg, tensors, ternary


def _load_from_hf_model(model: nn.Module) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], Dict[str, Tuple[np.ndarray, float]]]:
    hf_cfg = getattr(model, "config", None)
    if hf_cfg is None or getattr(hf_cfg, "model_type", None) != "bitnet" or not hasattr(hf_cfg, "to_dict"):
        raise TypeError(f"expected a transformers BitNetForCausalLM (config.model_type 'bitnet'), not {model.__class__.__name__}")
    layers = _hf_layers(model)
    ternary: Dict[str, Tuple[np.ndarray, float]] = {}
    for i, layer in enumerate(layers):
        for p in _PROJ_NAMES:
            stem = f"model.layers.{i}.{p}"
            mod = layer.get_submodule(p)
            w = getattr(mod, "weight", None)
            packed = isinstance(w, torch.Tensor) and (
                w.dtype == torch.uint8 or getattr(mod, "online_quant", True) is False)
            if packed:                     # float master weights (online quantisation) load as they are
                ternary[stem] = _module_ternary(mod, stem)
    prefixes = tuple(s + "." for s in ternary)
    tensors = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()
               if not k.startswith(prefixes) and v.is_floating_point() and not k.endswith("rotary_emb.inv_freq")}
    return hf_cfg.to_dict(), tensors, ternary


def save_pretrained(model: nn.Module, directory: PathLike) -> Path:
    """Write ``model`` as a Hugging Face packed BitNet b1.58 checkpoint directory.

    The format of microsoft/bitnet-b1.58-2B-4T: ``config.json`` (``quantization_config`` with
    ``linear_class: autobitlinear``, offline) and ``model.safetensors`` with each projection as
    packed uint8 codes ``[ceil(out/4), in]`` plus an fp32 ``weight_scale`` (``W = t * beta``);
    embeddings and norms in fp32. transformers' ``BitNetForCausalLM.from_pretrained`` loads it,
    and :func:`bitnet.convert.convert_hf_to_gguf` converts it.

    Parameters
    ----------
    model : BitNetTransformer or transformers BitNetForCausalLM
    directory : path
        Created if needed; ``config.json`` and ``model.safetensors`` are overwritten.
    """
    from safetensors.numpy import save_file

    cfg, tensors = _checkpoint_of(model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    save_file(tensors, str(out / "model.safetensors"))
    return out


def export(model: nn.Module, path: PathLike, type: str = "tq2_0", *, embed_type: str = "f32") -> Path:
    """Write ``model`` as a GGUF model file that :meth:`bitnet.BitNet.load_weights` runs.

    Parameters
    ----------
    model : BitNetTransformer or transformers.BitNetForCausalLM
        A trained BitNetTransformer (its eval-mode ternary weights are written), or a Hugging
        Face BitNet model loaded from a BitNet checkpoint (packed ``AutoBitLinear``/``BitLinear``
        layers keep their codes and scales; master weights are ternarised by absmean).
    path : path
        The GGUF file to write.
    type : {"tq2_0", "tq1_0", "i2_s", "f16"}
        Encoding of the ternary projections (see :mod:`bitnet.convert`). TQ types need every
        projection input size to be a multiple of 256, ``i2_s`` of 128.
    embed_type : {"f32", "f16", "bf16", "q8_0"}
        Encoding of the token embedding (which is also the output head). The default ``f32``
        keeps it exact, so the file computes the same logits as the PyTorch model in eval mode.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The model is written as a temporary packed Hugging Face checkpoint (:func:`save_pretrained`)
    and converted by :func:`bitnet.convert.convert_hf_to_gguf`: there is one GGUF writer.
    """
    from .convert import convert_hf_to_gguf

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a BitNetTransformer or a transformers BitNetForCausalLM, not {model.__class__.__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, not {path.__class__.__name__}")
    with tempfile.TemporaryDirectory(prefix="bitnet-export-") as tmp:
        save_pretrained(model, tmp)
        return Path(convert_hf_to_gguf(tmp, path, type=type, embed_type=embed_type))


# =============================================================================================
# to_device: BitLinear matmuls on the card
# =============================================================================================

class DeviceBitLinear(nn.Module):
    """A :class:`BitLinear` whose eval-mode matmul runs on a :class:`~bitnet.BitNet` device.

    The ternary weight is loaded into a user slot with ``load_weights_from_array(t, slot,
    scale=beta)`` and reloaded when the weight changes; ``forward`` in eval mode sends the input
    rows through ``BitNet.matmul`` (quantisation, integer product and rescale on the card) and
    adds the bias on the host. In training mode it runs the wrapped BitLinear (so training
    continues in PyTorch with gradients). Eval outputs equal the pure PyTorch eval outputs.
    """

    def __init__(self, inner: BitLinear, bitnet: BitNet) -> None:
        super().__init__()
        if not isinstance(inner, BitLinear):
            raise TypeError(f"inner must be a BitLinear, not {type(inner).__name__}")
        self.inner = inner
        self._bitnet = bitnet
        self._slot: Optional[int] = None
        self._loaded_key: Optional[Tuple[int, int]] = None
        self.train(inner.training)

    @property
    def bitnet(self) -> BitNet:
        """The device the matmuls run on."""
        return self._bitnet

    @property
    def slot(self) -> Optional[int]:
        """The user weight slot holding this layer (None until first used)."""
        return self._slot

    @property
    def in_features(self) -> int:
        return self.inner.in_features

    @property
    def out_features(self) -> int:
        return self.inner.out_features

    def extra_repr(self) -> str:
        return f"device={self._bitnet.device!r}, slot={self._slot}"

    def sync(self) -> int:
        """Load the current ternary weight into the slot if it changed; return the slot id."""
        key = self.inner._weight_key()
        if self._slot is None or key != self._loaded_key:
            t, beta = self.inner.ternary()
            self._slot = self._bitnet.load_weights_from_array(
                t.cpu().numpy(), -1 if self._slot is None else self._slot, scale=beta)
            self._loaded_key = key
        return self._slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.inner(x)
        self.inner._check_input(x)
        slot = self.sync()
        rows = x.detach().to(torch.float32).reshape(-1, self.inner.in_features).cpu().numpy()
        y = torch.from_numpy(np.ascontiguousarray(self._bitnet.matmul(rows, slot)))
        y = y.reshape(*x.shape[:-1], self.inner.out_features).to(x.device)
        if self.inner.bias is not None:
            y = y + self.inner.bias.detach().to(torch.float32)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


def to_device(module: nn.Module, device: Union[None, str, BitNet] = None) -> nn.Module:
    """Run the matmul of every :class:`BitLinear` in ``module`` on a BitNet device.

    Parameters
    ----------
    module : torch.nn.Module
        Any module tree (an MLP, a BitNetTransformer, ...). Each BitLinear inside is replaced,
        in place, by a :class:`DeviceBitLinear` wrapping it; a BitLinear passed directly is
        returned wrapped.
    device : str, BitNet or None
        An open :class:`~bitnet.BitNet`, or a device string (``"sim"``, ``"/dev/bitnet0"``;
        ``None`` = :func:`bitnet.default_device`) for which one BitNet is opened and shared by
        all layers.

    Returns
    -------
    torch.nn.Module
        ``module`` (or the wrapper when ``module`` is itself a BitLinear). In eval mode its
        outputs equal the pure PyTorch eval outputs; in training mode it trains as before.
        Already wrapped layers are moved to the new device.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, not {type(module).__name__}")
    if isinstance(device, BitNet):
        bn = device
        bn._check_open()
    elif device is None or isinstance(device, str):
        bn = BitNet(device)
    else:
        raise TypeError(f"device must be a BitNet, a device string such as 'sim', or None, not {type(device).__name__}")
    if isinstance(module, DeviceBitLinear):
        return DeviceBitLinear(module.inner, bn)
    if isinstance(module, BitLinear):
        return DeviceBitLinear(module, bn)
    targets = [(name, mod) for name, mod in module.named_modules() if isinstance(mod, (BitLinear, DeviceBitLinear))]
    skip = {name + ".inner" for name, mod in targets if isinstance(mod, DeviceBitLinear)}
    for name, mod in targets:
        if name in skip:
            continue
        inner = mod.inner if isinstance(mod, DeviceBitLinear) else mod
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, DeviceBitLinear(inner, bn))      # also works inside Sequential/ModuleList
    return module


# =============================================================================================
# Model files: GGUF, or a HF checkpoint directory converted once and cached
# =============================================================================================

def _cache_root(cache_dir: Optional[PathLike]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("BITNET_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitnet"


def _auto_type(hf_dir: Path) -> str:
    from .convert import _read_spec

    spec, _, _ = _read_spec(hf_dir)
    ins = (spec.hidden, spec.heads * spec.head_dim, spec.ffn)
    if all(k % 256 == 0 for k in ins):
        return "tq2_0"
    if all(k % 128 == 0 for k in ins):
        return "i2_s"
    return "f16"


def resolve_model_file(model_path: PathLike, *, type: Optional[str] = None, embed_type: str = "f16",
                       cache_dir: Optional[PathLike] = None) -> Path:
    """The GGUF file to load for ``model_path``: the file itself, or a cached conversion.

    Parameters
    ----------
    model_path : path
        A GGUF model file, or a Hugging Face BitNet checkpoint directory (``config.json`` +
        ``*.safetensors``).
    type : str, optional
        Ternary encoding for a conversion (default: ``tq2_0`` when the shapes allow, else
        ``i2_s``, else ``f16``).
    embed_type : str
        Embedding encoding for a conversion (default ``f16``, like ``bitnet convert``).
    cache_dir : path, optional
        Where conversions are kept: default ``$BITNET_CACHE_DIR``, else
        ``$XDG_CACHE_HOME/bitnet``, else ``~/.cache/bitnet``. Files are named
        ``converted/<dir name>-<type>-<embed_type>-<key>.gguf`` where ``key`` hashes the
        checkpoint directory's path and the names, sizes and modification times of its files:
        editing the checkpoint converts it again, loading it again does not.
    """
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path to a GGUF file or a checkpoint directory, not {model_path.__class__.__name__}")
    p = Path(model_path)
    if not p.exists():
        raise BitNetFileNotFoundError(
            ErrorCode.FILE, f"{p}: no such model file or checkpoint directory (it does not exist; hub ids are not downloaded)")
    if not p.is_dir():
        return p
    from . import __version__
    from .convert import EMBED_TYPES, OUTPUT_TYPES, convert_hf_to_gguf

    kind = _auto_type(p) if type is None else str(type).lower()
    if kind not in OUTPUT_TYPES:
        raise _invalid(f"unknown type {type!r}; expected one of {', '.join(OUTPUT_TYPES)}")
    embed = str(embed_type).lower()
    if embed not in EMBED_TYPES:
        raise _invalid(f"unknown embed_type {embed_type!r}; expected one of {', '.join(EMBED_TYPES)}")
    files = []
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".model", ".txt")):
            st = f.stat()
            files.append((f.name, st.st_size, st.st_mtime_ns))
    key_src = json.dumps({"dir": str(p.resolve()), "files": files, "type": kind, "embed": embed, "bitnet": __version__})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    out = _cache_root(cache_dir) / "converted" / f"{p.resolve().name}-{kind}-{embed}-{key}.gguf"
    if out.is_file():
        logger.info("using the cached conversion %s of %s", out, p)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.{os.getpid()}.partial.gguf")
    logger.info("converting %s to %s (%s, embeddings %s)", p, out, kind, embed)
    try:
        convert_hf_to_gguf(p, partial, type=kind, embed_type=embed)
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    return out


# =============================================================================================
# The seed classes
# =============================================================================================

@dataclass
class CausalLMOutput(BitNetOutput):
    """What :class:`BitNetForCausalLM` returns: Hugging Face field names (same fields and
    indexing as :class:`BitNetOutput`)."""


class BitNetModule(nn.Module):
    """A BitNet model on a device, as a ``torch.nn.Module`` (the seed API).

    Parameters
    ----------
    device : str, optional
        ``"sim"``, ``"/dev/bitnet0"``...; ``None`` picks :func:`bitnet.default_device`.
    model_path : path, optional
        A GGUF model file or a Hugging Face BitNet checkpoint directory (converted once and
        cached, see :func:`resolve_model_file`); can also be loaded later with
        :meth:`load_weights`.
    fast_head, profile, n_threads
        As for :class:`bitnet.BitNet`.

    The module has no parameters: the weights live on the card. ``self.bitnet`` is the
    underlying :class:`~bitnet.BitNet` (counters, status). ``close()`` releases it; the module
    is also a context manager.
    """

    def __init__(self, device: Optional[str] = None, model_path: Optional[PathLike] = None, *,
                 fast_head: bool = False, profile: Optional[str] = None, n_threads: Optional[int] = None) -> None:
        super().__init__()
        self.bitnet = BitNet(device, profile=profile, n_threads=n_threads)
        self.model_path: Optional[Path] = None
        if model_path is not None:
            try:
                self.load_weights(model_path, fast_head=fast_head)
            except BaseException:
                self.bitnet.close()
                raise

    # ---------------------------------------------------------------- lifecycle
    def load_weights(self, model_path: PathLike, *, fast_head: bool = False, type: Optional[str] = None,
                     embed_type: str = "f16", cache_dir: Optional[PathLike] = None) -> None:
        """Load a GGUF file or a HF checkpoint directory onto the card (see :func:`resolve_model_file`)."""
        path = resolve_model_file(model_path, type=type, embed_type=embed_type, cache_dir=cache_dir)
        self.bitnet.load_weights(path, fast_head=fast_head)
        self.model_path = path

    def close(self) -> None:
        """Release the device. Idempotent."""
        self.bitnet.close()

    def __enter__(self) -> "BitNetModule":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def extra_repr(self) -> str:
        return repr(self.bitnet)

    @property
    def config(self) -> Any:
        """The loaded model's configuration (``vocab_size``, ``hidden_size``, ``eos_token_id``...)
        as attributes; see :meth:`bitnet.BitNet.model_config`."""
        from types import SimpleNamespace

        return SimpleNamespace(**self.bitnet.model_config())

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _prepare(input_ids: Any, attention_mask: Any) -> Tuple[torch.Tensor, bool, List[Tuple[int, int]], List[np.ndarray]]:
        ids = _as_ids(input_ids)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        mask = _as_mask(attention_mask, tuple(ids.shape))
        b, t = ids.shape
        spans = _row_spans(mask, b, t)
        if int(ids.max()) > 2**31 - 1:
            raise _invalid(f"input_ids holds token id {int(ids.max())}, beyond int32")
        rows = [np.ascontiguousarray(ids[i, s:s + n].numpy(), dtype=np.int32) for i, (s, n) in enumerate(spans)]
        return ids, squeeze, spans, rows

    def _run(self, rows: List[np.ndarray], max_new: int, temperature: float, top_k: int, top_p: float,
             seed: Optional[int], stops: Optional[Iterable[int]]) -> List[np.ndarray]:
        """One batched job on the engine (one forward pass per step for all rows)."""
        bn = self.bitnet
        bn._config()
        t, k, p, s = check_sampling(temperature, top_k, top_p, seed)
        stop_list = check_stop_tokens(stops, bn._stop_default)

        def start(record: List[Any]) -> Any:
            job = bn._dev.submit(rows, max_new, t, k, p, s, stop_list, record)
            bn._job = job
            bn._job_error_reported = False
            return job

        # Waits in short slices (Ctrl-C aborts the job) and never orphans it (_run_interruptibly).
        job = _run_interruptibly(start)
        bn._report_job_error(job)
        return [job.tokens(i) for i in range(len(rows))]

    # ---------------------------------------------------------------- the seed API
    def forward(self, input_ids: Any, max_length: int = 1024, attention_mask: Any = None, *,
                pad_token_id: int = 0, **sampling: Any) -> torch.Tensor:
        """Generate for a batch of prompts; return only the generated ids.

        Parameters
        ----------
        input_ids : LongTensor ``[B, T]`` or ``[T]``
        max_length : int
            The most tokens to generate per row (the seed's ``max_output``).
        attention_mask : ``[B, T]`` of 0/1, optional
            Real tokens (left or right padding). Without it every id is a token.
        pad_token_id : int
            Fills rows that stopped early (after an end-of-sequence token).
        **sampling
            ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop_token_ids`` as for
            :meth:`bitnet.BitNet.inference` (greedy by default).

        Returns
        -------
        torch.LongTensor
            ``[B, n]`` generated ids (``[n]`` for 1-D input), right-padded with ``pad_token_id``.
        """
        ids, squeeze, _, rows = self._prepare(input_ids, attention_mask)
        n = check_count(max_length, "max_length", 0)
        pad = check_count(pad_token_id, "pad_token_id", 0)
        stops = sampling.pop("stop_token_ids", None)
        extra = set(sampling) - {"temperature", "top_k", "top_p", "seed"}
        if extra:
            raise TypeError(f"unexpected keyword arguments: {sorted(extra)}")
        outs = self._run(rows, n, sampling.get("temperature", 0.0), sampling.get("top_k", 0),
                         sampling.get("top_p", 1.0), sampling.get("seed"), stops)
        width = max((len(o) for o in outs), default=0)
        result = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, o in enumerate(outs):
            result[i, :len(o)] = torch.from_numpy(o.astype(np.int64))
        return result[0] if squeeze else result

    def generate(self, input_ids: Any, max_new_tokens: int = 100, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: Any = None, pad_token_id: Optional[int] = None,
                 attention_mask: Any = None, *, seed: Optional[int] = None, **kwargs: Any) -> torch.Tensor:
        """Hugging Face style generation: returns the prompt followed by the new tokens.

        Parameters
        ----------
        input_ids : LongTensor ``[B, T]`` or ``[T]``
        max_new_tokens : int
        do_sample : bool
            False: greedy (``temperature``, ``top_k``, ``top_p`` are ignored). True: sample with
            them (``temperature > 0``), seeded by ``seed`` (row ``i`` uses ``seed + i``).
        eos_token_id : int or list of int, optional
            Tokens that end a row (kept in the output). Default: the model's end-of-sequence
            tokens; ``[]`` never stops early.
        pad_token_id : int, optional
            Fills rows that finished early. Default: the first EOS id, else 0 (as HF).
        attention_mask : ``[B, T]`` of 0/1, optional
            Real tokens. Left padding is the Hugging Face convention for generation; right
            padding also works (each row continues its own last token) but the new tokens are
            still appended after the full padded width.

        Returns
        -------
        torch.LongTensor
            ``[B, T + n]``: ``input_ids`` unchanged, then each row's new tokens, right-padded
            with ``pad_token_id`` to the longest row (``n <= max_new_tokens``).
        """
        if kwargs.get("num_beams", 1) == 1:
            kwargs.pop("num_beams", None)
        kwargs.pop("use_cache", None)
        if kwargs:
            raise TypeError(f"generate() got unsupported arguments {sorted(kwargs)} (beam search and other "
                            "Hugging Face options are not implemented)")
        self.bitnet._config()
        ids, squeeze, spans, rows = self._prepare(input_ids, attention_mask)
        n = check_count(max_new_tokens, "max_new_tokens", 0)
        if not isinstance(do_sample, bool):
            raise TypeError(f"do_sample must be True or False, got {type(do_sample).__name__}")
        if do_sample:
            t = check_float(temperature, "temperature")
            if not t > 0:
                raise _invalid(f"temperature must be > 0 when do_sample=True, got {temperature!r}")
        else:
            t, top_k, top_p = 0.0, 0, 1.0
        if any(s + m < ids.shape[1] for s, m in spans):
            logger.warning("generate: right-padded input; new tokens are appended after the padding (use left padding)")
        stops = check_stop_tokens(eos_token_id, self.bitnet._stop_default, "eos_token_id")
        outs = self._run(rows, n, t, top_k, top_p, seed, stops)
        if pad_token_id is None:
            pad_token_id = stops[0] if stops else 0
        pad = check_count(pad_token_id, "pad_token_id", 0)
        width = max((len(o) for o in outs), default=0)
        result = torch.full((ids.shape[0], ids.shape[1] + width), pad, dtype=torch.long)
        result[:, :ids.shape[1]] = ids
        for i, o in enumerate(outs):
            result[i, ids.shape[1]:ids.shape[1] + len(o)] = torch.from_numpy(o.astype(np.int64))
        return result[0] if squeeze else result


class BitNetForCausalLM(BitNetModule):
    """Hugging Face style causal LM on a BitNet device.

    ``BitNetForCausalLM.from_pretrained(path, device=None)`` loads a GGUF file or converts a
    Hugging Face BitNet checkpoint directory (once; cached). ``model(input_ids,
    attention_mask=None)`` returns :class:`CausalLMOutput` with fp32 ``.logits [B, T, vocab]``;
    ``model.generate(...)`` is :meth:`BitNetModule.generate`.
    """

    @classmethod
    def from_pretrained(cls, model_path: PathLike, device: Optional[str] = None, *, fast_head: bool = False,
                        type: Optional[str] = None, embed_type: str = "f16", cache_dir: Optional[PathLike] = None,
                        profile: Optional[str] = None, n_threads: Optional[int] = None) -> "BitNetForCausalLM":
        """Open ``device`` and load ``model_path`` (GGUF file or HF checkpoint directory).

        ``type``, ``embed_type`` and ``cache_dir`` apply when a checkpoint directory is
        converted (see :func:`resolve_model_file`).
        """
        model = cls(device, None, profile=profile, n_threads=n_threads)
        try:
            model.load_weights(model_path, fast_head=fast_head, type=type, embed_type=embed_type, cache_dir=cache_dir)
        except BaseException:
            model.close()
            raise
        return model.eval()

    def forward(  # type: ignore[override]
        self, input_ids: Any, attention_mask: Any = None, labels: Any = None, **kwargs: Any
    ) -> CausalLMOutput:
        """Logits of one forward pass per row (from an empty cache), as Hugging Face returns them.

        Parameters
        ----------
        input_ids : LongTensor ``[B, T]`` or ``[T]``
        attention_mask : ``[B, T]`` of 0/1, optional
            Real tokens (left or right padding): each row runs unpadded, its logits are placed
            at its token positions; padding positions hold zeros.
        labels : LongTensor, optional
            Next-token targets (shifted inside, ``-100`` ignored) for ``.loss``.

        Returns
        -------
        CausalLMOutput
            ``.logits``: fp32 ``[B, T, vocab]`` (``[T, vocab]`` for 1-D input); ``.loss``.
        """
        kwargs.pop("use_cache", None)
        kwargs.pop("return_dict", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        ids, squeeze, spans, rows = self._prepare(input_ids, attention_mask)
        vocab = int(self.bitnet.model_info.vocab_size)
        logits = torch.zeros(ids.shape[0], ids.shape[1], vocab, dtype=torch.float32)
        for i, ((s, n), row) in enumerate(zip(spans, rows)):
            logits[i, s:s + n] = torch.from_numpy(np.ascontiguousarray(self.bitnet.logits(row)))
        loss = None
        if labels is not None:
            lab = _as_labels(labels)
            if squeeze and lab.dim() == 1:
                lab = lab[None]
            if tuple(lab.shape) != tuple(ids.shape):
                raise _invalid(f"labels has shape {tuple(lab.shape)}, expected {tuple(ids.shape)}")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), lab[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits=logits[0] if squeeze else logits, loss=loss)
