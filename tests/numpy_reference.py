"""A readable float64 NumPy re-implementation of the BitNet b1.58 forward pass.

This is an independent oracle for the engine and for transformers: it shares no code with
``bitnet.convert`` or with transformers' modelling code. It follows REFERENCE.md section 1.2
(microsoft/bitnet-b1.58-2B-4T):

    h = E[tokens]                                        # embedding gather
    per layer:
        a = RMSNorm_in(h)
        Q, K, V = BL_q(a), BL_k(a), BL_v(a)              # BitLinear = act-quant + ternary matmul
        Q, K = RoPE_neox(Q), RoPE_neox(K)                # half-split rotation
        O = softmax(Q K^T / sqrt(d) + causal) V          # GQA: kv head = q head // group
        h = h + BL_o(RMSNorm_attn_sub(O))
        m = RMSNorm_post(h)
        u = act(BL_gate(m)) * BL_up(m)                   # act = relu(x)^2 (or silu)
        h = h + BL_down(RMSNorm_ffn_sub(u))
    logits = RMSNorm_final(h) @ E^T                      # tied head (or lm_head when untied)

BitLinear: per-token int8 absmax quantisation of the input (s = 127 / max(max|x|, 1e-5),
q = clip(round_half_even(x * s), -128, 127)), integer product with the ternary codes t, then
``y = (q . t) * beta / s``. The quantisation step itself is done in float32, as the spec says
(and as HF and the engine do), so that the integer codes agree with them; everything else is
float64.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "BitNetWeights", "load_hf_checkpoint", "forward", "greedy", "act_quant", "bitlinear",
    "Quantizer", "Candidate", "Explanation", "explain_logits",
]


@dataclass
class Ternary:
    """One BitLinear weight: codes t in {-1,0,1} of shape [out, in] and the scale beta."""

    t: np.ndarray       # int8 [out, in]
    beta: float         # W = t * beta


@dataclass
class Layer:
    attn_norm: np.ndarray        # [hidden]
    q: Ternary                   # [heads*head_dim, hidden]
    k: Ternary                   # [kv_heads*head_dim, hidden]
    v: Ternary                   # [kv_heads*head_dim, hidden]
    attn_sub_norm: Optional[np.ndarray]   # [hidden], None for LLaMA-type models
    o: Ternary                   # [hidden, heads*head_dim]
    ffn_norm: np.ndarray         # [hidden]
    gate: Ternary                # [ffn, hidden]
    up: Ternary                  # [ffn, hidden]
    ffn_sub_norm: Optional[np.ndarray]    # [ffn], None for LLaMA-type models
    down: Ternary                # [hidden, ffn]


@dataclass
class BitNetWeights:
    embed: np.ndarray            # [vocab, hidden] float64
    final_norm: np.ndarray       # [hidden]
    layers: List[Layer]
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    eps: float
    act: str = "relu2"           # "relu2" or "silu"
    lm_head: Optional[np.ndarray] = None   # [vocab, hidden]; None = tied to embed

    @property
    def head_dim(self) -> int:
        return self.embed.shape[1] // self.n_heads


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: [T, n] -> x / sqrt(mean(x^2) + eps) * w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(x.dtype)


def act_quant(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token int8 absmax quantisation in float32. x: [T, n] -> (q int32 [T, n], s float32 [T, 1])."""
    x32 = x.astype(np.float32)
    amax = np.maximum(np.abs(x32).max(axis=-1, keepdims=True), np.float32(1e-5))
    s = (np.float32(127.0) / amax).astype(np.float32)
    q = np.clip(np.rint(x32 * s), -128, 127).astype(np.int32)
    return q, s


@dataclass
class Candidate:
    """An activation code whose exact value lies within ``dist`` (in code units) of a rounding tie:
    any fp32 implementation may legitimately round it to ``alt`` instead of the oracle's code."""

    dist: float
    layer: int
    site: str          # "attn_in" (q/k/v input), "attn_out" (o input), "ffn_in" (gate/up), "ffn_out" (down)
    pos: int
    idx: int
    alt: int

    @property
    def key(self) -> Tuple[int, str, int, int]:
        return (self.layer, self.site, self.pos, self.idx)


class Quantizer:
    """Activation quantiser with optional forced flips and near-tie bookkeeping.

    ``flips`` maps (layer, site, pos, idx) -> forced code; ``tau`` (code units) selects which
    near-tie codes are reported in ``candidates`` (tie distance measured on the float64 value).
    """

    def __init__(self, flips: Optional[Dict[Tuple[int, str, int, int], int]] = None, tau: float = 0.0):
        self.flips = dict(flips or {})
        self.tau = tau
        self.candidates: List[Candidate] = []

    def __call__(self, x: np.ndarray, layer: int, site: str) -> Tuple[np.ndarray, np.ndarray]:
        q, s = act_quant(x)
        if self.tau > 0:
            x64 = x.astype(np.float64)
            amax = np.maximum(np.abs(x64).max(axis=-1, keepdims=True), 1e-5)
            y = x64 * (127.0 / amax)
            dist = np.abs(y - np.floor(y) - 0.5)
            for pos, idx in zip(*np.nonzero(dist < self.tau)):
                code = int(q[pos, idx])
                alt = code + 1 if y[pos, idx] > code else code - 1
                if -128 <= alt <= 127:
                    self.candidates.append(Candidate(float(dist[pos, idx]), layer, site, int(pos), int(idx), alt))
        for (fl, fs, fp, fi), code in self.flips.items():
            if fl == layer and fs == site and fp < q.shape[0]:
                q[fp, fi] = code
        return q, s


def bitlinear(x: np.ndarray, w: Ternary, quant=None, layer: int = -1, site: str = "") -> np.ndarray:
    """x: [T, in] -> [T, out] = (q . t^T) * beta / s (integer accumulation, exact in int64)."""
    q, s = quant(x, layer, site) if quant is not None else act_quant(x)
    acc = q.astype(np.int64) @ w.t.astype(np.int64).T
    return (acc.astype(np.float64) * w.beta / s.astype(np.float64)).astype(x.dtype)


def bitlinear_shared(x: np.ndarray, ws: Sequence[Ternary], quant, layer: int, site: str) -> List[np.ndarray]:
    """Several BitLinears reading the same input (q/k/v, gate/up) share one quantisation."""
    q, s = quant(x, layer, site) if quant is not None else act_quant(x)
    outs = []
    for w in ws:
        acc = q.astype(np.int64) @ w.t.astype(np.int64).T
        outs.append((acc.astype(np.float64) * w.beta / s.astype(np.float64)).astype(x.dtype))
    return outs


def rope_neox(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Half-split (NeoX / HF rotate_half) rotary embedding. x: [T, heads, d]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)      # [d/2]
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]          # [T, d/2]
    cos = np.cos(np.concatenate([ang, ang], axis=-1))[:, None, :].astype(x.dtype)   # [T, 1, d]
    sin = np.sin(np.concatenate([ang, ang], axis=-1))[:, None, :].astype(x.dtype)
    half = d // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_kv: int) -> np.ndarray:
    """Causal GQA attention. q: [T, H, d], k/v: [T, Hkv, d] -> [T, H*d]."""
    T, H, d = q.shape
    group = H // n_kv
    out = np.empty_like(q)
    mask = np.triu(np.full((T, T), -np.inf, dtype=q.dtype), k=1)
    for h in range(H):
        kv = h // group
        scores = q[:, h, :] @ k[:, kv, :].T / q.dtype.type(np.sqrt(d)) + mask  # [T, T]
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kv, :]
    return out.reshape(T, H * d)


def ffn_act(x: np.ndarray, act: str) -> np.ndarray:
    if act == "relu2":
        return np.maximum(x, 0) ** 2
    if act == "silu":
        return x / (1 + np.exp(-x))
    raise ValueError(f"unknown activation {act!r}")


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

def forward(w: BitNetWeights, tokens: Sequence[int], *, dtype=np.float64, quant: Optional[Quantizer] = None) -> np.ndarray:
    """Logits [T, vocab] of one forward pass over ``tokens`` from an empty cache.

    ``dtype`` is the float type of everything except the integer matmuls and the (float32)
    quantisation step: float64 is the oracle; float32 models an fp32 engine with a different
    operation order. ``quant`` (a :class:`Quantizer`) forces flips / records near-ties.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    T = len(tokens)
    pos = np.arange(T)
    hd = w.head_dim
    h = w.embed[tokens].astype(dtype)                                        # [T, hidden]
    for li, L in enumerate(w.layers):
        a = rmsnorm(h, L.attn_norm, w.eps)
        q, k, v = bitlinear_shared(a, (L.q, L.k, L.v), quant, li, "attn_in")
        q = rope_neox(q.reshape(T, w.n_heads, hd), pos, w.rope_theta)
        k = rope_neox(k.reshape(T, w.n_kv_heads, hd), pos, w.rope_theta)
        o = attention(q, k, v.reshape(T, w.n_kv_heads, hd), w.n_kv_heads)   # [T, heads*hd]
        if L.attn_sub_norm is not None:
            o = rmsnorm(o, L.attn_sub_norm, w.eps)
        h = h + bitlinear(o, L.o, quant, li, "attn_out")
        m = rmsnorm(h, L.ffn_norm, w.eps)
        g, u = bitlinear_shared(m, (L.gate, L.up), quant, li, "ffn_in")
        u = ffn_act(g, w.act) * u                                            # [T, ffn]
        if L.ffn_sub_norm is not None:
            u = rmsnorm(u, L.ffn_sub_norm, w.eps)
        h = h + bitlinear(u, L.down, quant, li, "ffn_out")
    head = w.embed if w.lm_head is None else w.lm_head
    return (rmsnorm(h, w.final_norm, w.eps) @ head.T.astype(dtype)).astype(np.float64)


def greedy(w: BitNetWeights, prompt: Sequence[int], n_new: int, *, dtype=np.float64) -> Tuple[List[int], List[float]]:
    """Greedy continuation (recomputes the whole prefix each step; fine for tiny models).

    Returns the new tokens and, per step, the margin between the best and second-best logit
    (a small margin means the step is numerically fragile).
    """
    seq = list(int(t) for t in prompt)
    new: List[int] = []
    margins: List[float] = []
    for _ in range(n_new):
        last = forward(w, seq, dtype=dtype)[-1]
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        nxt = int(np.argmax(last))
        new.append(nxt)
        seq.append(nxt)
    return new, margins


# ---------------------------------------------------------------------------------------------
# explaining another implementation's logits up to near-tie activation codes
# ---------------------------------------------------------------------------------------------

@dataclass
class Explanation:
    """Result of :func:`explain_logits`."""

    ok: bool
    flips: List[Candidate]        # near-tie codes the other implementation rounded the other way
    raw_err: np.ndarray           # [T] max |observed - oracle| per position, no flips
    err: np.ndarray               # [T] the same with the flips applied
    oracle: np.ndarray            # [T, vocab] oracle logits with the flips applied
    message: str = ""

    @property
    def max_raw_err(self) -> float:
        return float(self.raw_err.max())

    @property
    def max_err(self) -> float:
        return float(self.err.max())


def explain_logits(
    w: BitNetWeights,
    tokens: Sequence[int],
    observed: np.ndarray,
    *,
    tol: float = 1e-3,
    tau: float = 5e-4,
    max_flips: int = 64,
    max_tries: int = 300,
    combo_pool: int = 6,
) -> Explanation:
    """Check ``observed`` logits against the float64 oracle, allowing near-tie code flips.

    W1.58A8 logits are discontinuous: an activation whose exact ``x * s`` lies within fp32
    rounding distance of a half-integer can be rounded either way by a correct fp32
    implementation, and the flipped code moves the logits by ~1e-2 here, which then cascades
    through later layers and positions. This walks the positions in order; where ``observed``
    differs from the oracle by more than ``tol`` it searches the oracle's near-tie codes
    (distance < ``tau`` code units, nearest ties first) for a flip, or a pair or triple of the
    nearest ones, that restores agreement up to that position. ``ok`` means every position agrees within ``tol``
    using only such flips: the observed logits are the exact BitNet function, evaluated with
    legitimate rounding at ambiguous codes.
    """
    observed = np.asarray(observed, dtype=np.float64)
    T = len(tokens)
    flips: Dict[Tuple[int, str, int, int], int] = {}
    chosen: List[Candidate] = []

    def run(fl):
        qz = Quantizer(fl, tau)
        ref = forward(w, tokens, quant=qz)
        return ref, np.abs(ref - observed).max(axis=1), qz.candidates

    ref, err, cands = run(flips)
    raw_err = err.copy()
    tries = 0
    while True:
        bad = np.nonzero(err > tol)[0]
        if len(bad) == 0:
            return Explanation(True, chosen, raw_err, err, ref)
        t = int(bad[0])
        if len(chosen) >= max_flips:
            return Explanation(False, chosen, raw_err, err, ref, f"more than {max_flips} flips needed")
        # the nearest ties first: a genuine fp32 rounding ambiguity sits within ~1e-5 code units
        # of the tie, far closer than the bulk of the candidates
        pool = [c for c in cands if c.key not in flips and c.pos <= t]
        pool.sort(key=lambda c: (c.dist, c.pos != t))
        # single flips first, then pairs and triples of the nearest ties (exact ties are common in
        # layer 0, where bf16 embeddings and norm weights make x*s land exactly on k + 1/2)
        near = pool[:combo_pool]
        combos = [(c,) for c in near]
        for r in (2, 3):
            combos += list(itertools.combinations(near, r))
        combos += [(c,) for c in pool[combo_pool:]]
        accepted = False
        for combo in combos:
            if tries >= max_tries:
                break
            tries += 1
            trial = dict(flips)
            for c in combo:
                trial[c.key] = c.alt
            ref2, err2, cands2 = run(trial)
            if (err2[: t + 1] <= tol).all():
                flips, chosen = trial, chosen + list(combo)
                ref, err, cands = ref2, err2, cands2
                accepted = True
                break
        if not accepted:
            return Explanation(
                False, chosen, raw_err, err, ref,
                f"position {t}: |observed - oracle| = {err[t]:.3g} > {tol} and no near-tie flip (or pair/triple) "
                f"(tau={tau}, {len(pool)} candidates, {tries} forward passes) explains it",
            )


# ---------------------------------------------------------------------------------------------
# loading a Hugging Face checkpoint directory (own unpacking; independent of bitnet.convert)
# ---------------------------------------------------------------------------------------------

def _unpack_rows(packed: np.ndarray, n_out: int) -> np.ndarray:
    """HF packed uint8 [R, in] -> int8 [n_out, in]: byte (p, c) holds rows p, p+R, p+2R, p+3R
    in bit pairs 1:0, 3:2, 5:4, 7:6 as code t+1."""
    parts = [((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)]
    return np.concatenate(parts, axis=0)[:n_out]


def load_hf_checkpoint(ckpt_dir: str | Path, act: Optional[str] = None) -> BitNetWeights:
    """Read a BitNetForCausalLM (or LLaMA-type BitNet) checkpoint directory into float64 arrays.

    Packed weights use the ``linear_class`` rule (autobitlinear: beta = weight_scale;
    bitlinear or missing: beta = 1 / weight_scale, computed in fp32); float master weights are
    ternarised by absmean (beta = max(mean|W|, 1e-5) rounded to fp32).
    ``act`` overrides the FFN activation from config.json (e.g. to model a SiLU-default loader).
    """
    import torch
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    qcfg = cfg.get("quantization_config") or {}
    multiply = qcfg.get("linear_class", "bitlinear") == "autobitlinear"
    raw: Dict[str, "torch.Tensor"] = {}
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        raw.update(load_file(str(f)))

    def f64(name: str) -> np.ndarray:
        return raw[name].to(torch.float32).numpy().astype(np.float64)

    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    hd = cfg.get("head_dim") or hidden // n_heads
    inter = cfg["intermediate_size"]
    out_dims = {
        "self_attn.q_proj": n_heads * hd, "self_attn.k_proj": n_kv * hd, "self_attn.v_proj": n_kv * hd,
        "self_attn.o_proj": hidden, "mlp.gate_proj": inter, "mlp.up_proj": inter, "mlp.down_proj": hidden,
    }

    def ternary(stem: str, n_out: int) -> Ternary:
        wt = raw[stem + ".weight"]
        if wt.dtype == torch.uint8:
            t = _unpack_rows(wt.numpy(), n_out)
            ws = np.float32(raw[stem + ".weight_scale"].to(torch.float32).reshape(-1)[0].item())
            beta = ws if multiply else np.float32(1.0) / ws
            return Ternary(t, float(beta))
        w = f64(stem + ".weight")
        beta = np.float32(max(np.abs(w).mean(), 1e-5))
        return Ternary(np.clip(np.rint(w / float(beta)), -1, 1).astype(np.int8), float(beta))

    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sub_a = p + "self_attn.attn_sub_norm.weight"
        sub_f = p + "mlp.ffn_sub_norm.weight"
        layers.append(Layer(
            attn_norm=f64(p + "input_layernorm.weight"),
            q=ternary(p + "self_attn.q_proj", out_dims["self_attn.q_proj"]),
            k=ternary(p + "self_attn.k_proj", out_dims["self_attn.k_proj"]),
            v=ternary(p + "self_attn.v_proj", out_dims["self_attn.v_proj"]),
            attn_sub_norm=f64(sub_a) if sub_a in raw else None,
            o=ternary(p + "self_attn.o_proj", out_dims["self_attn.o_proj"]),
            ffn_norm=f64(p + "post_attention_layernorm.weight"),
            gate=ternary(p + "mlp.gate_proj", out_dims["mlp.gate_proj"]),
            up=ternary(p + "mlp.up_proj", out_dims["mlp.up_proj"]),
            ffn_sub_norm=f64(sub_f) if sub_f in raw else None,
            down=ternary(p + "mlp.down_proj", out_dims["mlp.down_proj"]),
        ))
    rope_theta = cfg.get("rope_theta")
    if rope_theta is None:
        rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    tied = cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in raw
    hidden_act = act or cfg.get("hidden_act", "silu")
    return BitNetWeights(
        embed=f64("model.embed_tokens.weight"),
        final_norm=f64("model.norm.weight"),
        layers=layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        rope_theta=float(rope_theta),
        eps=float(cfg.get("rms_norm_eps", 1e-5)),
        act="relu2" if hidden_act in ("relu2", "relu_squared") else hidden_act,
        lm_head=None if tied else f64("lm_head.weight"),
    )
