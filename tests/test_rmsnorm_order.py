"""RMSNorm's mean of squares in the documented order (NUMERICS.md 3): 16 partial sums in float64
(sum l takes the elements i = l mod 16), combined s[l] += s[l+8], += s[l+4], += s[l+2], s[0] + s[1].

The engine (C++ host code), the PyTorch eval-mode mirror and a plain-Python rendering of that
order must agree bit for bit, including on an input built so that the order decides the fp32
result."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet import _core


def documented_rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """One row, the documented operations one at a time (Python floats are IEEE doubles)."""
    x = x.astype(np.float32)
    p = [0.0] * 16
    for i, v in enumerate(x):
        p[i % 16] += float(v) * float(v)          # a float32 square is exact in double
    for step in (8, 4, 2):
        for lane in range(step):
            p[lane] += p[lane + step]
    mean = np.float32((p[0] + p[1]) / len(x))
    r = np.float32(1.0) / np.float32(math.sqrt(float(mean + np.float32(eps))))   # sqrtf is exact-rounded
    return (w.astype(np.float32) * (x * r)).astype(np.float32)


def order_sensitive_row() -> np.ndarray:
    """a^2 / 8 lies exactly halfway between two fp32 values (ties to even rounds down), and the
    sum of squares is 4 a^2 plus 28 squares of 2^-54. Each of those is lost next to a^2 in double;
    in the 16-lane order 24 of them are first summed among themselves (lanes 4..15) and reach the
    a^2 lanes as whole ulps, so the mean rounds up. Index order, or 4 lanes (the engine's order
    before), adds every one of them to an a^2 alone and rounds down."""
    a = np.float32(1 + 2.0 ** -12)                 # a^2 = 1 + 2^-11 + 2^-24
    return np.array([a] * 4 + [np.float32(2.0 ** -27)] * 28, dtype=np.float32)


def test_engine_follows_the_documented_order():
    rng = np.random.default_rng(7)
    rows = [order_sensitive_row()]
    for n in (1, 15, 16, 17, 31, 100, 2560, 2561, 6912):
        # Magnitudes over many octaves, so that the summation order shows in the low bits.
        rows.append((rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32))
    for x in rows:
        w = rng.standard_normal(len(x)).astype(np.float32)
        for eps in (0.0, 1e-5):
            got = _core._rmsnorm(x[None, :], w, eps)[0]
            want = documented_rmsnorm(x, w, eps)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (len(x), eps)


def test_order_sensitive_row_rounds_up():
    x = order_sensitive_row()
    ones = np.ones_like(x)
    got = _core._rmsnorm(x[None, :], ones, 0.0)[0]
    # The tiny squares lost: the mean is exactly the tie (1 + 2^-11 + 2^-24) / 8, rounded down.
    mean_lost = np.float32(np.float64(1 + 2.0 ** -11 + 2.0 ** -24) / 8)
    assert mean_lost == np.float32((1 + 2.0 ** -11) / 8)
    r_lost = np.float32(1.0) / np.float32(math.sqrt(float(mean_lost)))
    assert got[0] != x[0] * r_lost
    assert np.array_equal(got, documented_rmsnorm(x, ones, 0.0))


def test_torch_eval_rmsnorm_matches_the_engine():
    torch = pytest.importorskip("torch")
    from bitnet.torch_api import BitNetRMSNorm

    rng = np.random.default_rng(11)
    for n in (16, 17, 32, 2560):
        x = np.stack([order_sensitive_row() if n == 32 else
                      (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32)
                      for _ in range(3)])
        norm = BitNetRMSNorm(n, eps=0.0).eval()
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
            got = norm(torch.from_numpy(x)).numpy()
        want = _core._rmsnorm(x, norm.weight.detach().numpy(), 0.0)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), n
