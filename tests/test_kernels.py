"""Every SIMD kernel against the scalar reference, bit for bit, on random and edge shapes."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import _core

KERNELS = [k for k in _core.available_kernels() if k != "ref"]

SHAPES = [(1, 1, 1), (1, 63, 1), (5, 64, 1), (7, 65, 2), (4, 127, 3), (9, 128, 5), (16, 200, 8), (3, 257, 13),
          (33, 640, 1), (12, 1000, 64), (64, 2560, 2), (20, 384, 17), (4, 6912, 1)]


def _random(shape, seed, kind="random"):
    n, k, b = shape
    rng = np.random.default_rng(seed)
    if kind == "random":
        t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
        q = rng.integers(-128, 128, size=(b, k)).astype(np.int8)
    elif kind == "extreme":     # largest magnitudes: all +1 / all -1 against -128 / 127
        t = np.where(rng.random((n, k)) < 0.5, 1, -1).astype(np.int8)
        q = np.where(rng.random((b, k)) < 0.5, -128, 127).astype(np.int8)
    else:                       # sparse weights, mostly-zero activations
        t = (rng.random((n, k)) < 0.05).astype(np.int8) * rng.choice([-1, 1], size=(n, k)).astype(np.int8)
        q = (rng.random((b, k)) < 0.1).astype(np.int8) * rng.integers(-128, 128, size=(b, k)).astype(np.int8)
    return t, q


def test_kernels_available():
    assert "ref" in _core.available_kernels()


@pytest.mark.parametrize("kind", ["random", "extreme", "sparse"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_exact_integer_matmul(shape, kind):
    t, q = _random(shape, 1, kind)
    ref = _core._kernel_gemm("ref", t, q, 0, t.shape[0])
    assert np.array_equal(ref, q.astype(np.int64) @ t.T.astype(np.int64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["random", "extreme", "sparse"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(kernel, shape, kind):
    t, q = _random(shape, sum(shape), kind)
    ref = _core._kernel_gemm("ref", t, q, 0, t.shape[0])
    got = _core._kernel_gemm(kernel, t, q, 0, t.shape[0])
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch", list(range(1, 17)) + [31, 64])
def test_kernel_batch_sizes_and_row_ranges(kernel, batch):
    t, q = _random((23, 321, batch), batch)
    ref = _core._kernel_gemm("ref", t, q, 0, 23)
    for j0, j1 in [(0, 23), (5, 6), (3, 21), (20, 23)]:
        got = _core._kernel_gemm(kernel, t, q, j0, j1)
        assert np.array_equal(got[:, j0:j1], ref[:, j0:j1])
        assert not got[:, :j0].any() and not got[:, j1:].any()   # rows outside the range untouched


@pytest.mark.parametrize("kernel", ["ref"] + KERNELS)
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 64])
def test_kernel_empty_rows(kernel, batch):
    # K = 0 (the card refuses such a matrix, the kernels must still not divide by a zero chunk count)
    got = _core._kernel_gemm(kernel, np.zeros((5, 0), np.int8), np.zeros((batch, 0), np.int8), 0, 5)
    assert got.shape == (batch, 5) and not got.any()


@pytest.mark.parametrize("kernel", ["ref"] + KERNELS)
@pytest.mark.parametrize("k", [64, 321])
def test_kernel_empty_batch(kernel, k):
    # No activation rows: nothing to compute and nothing to write (the small-batch paths pick
    # their tile by batch size and must not take an empty batch for one of them)
    t, _ = _random((13, k, 1), 1)
    got = _core._kernel_gemm(kernel, t, np.zeros((0, k), np.int8), 0, 13)
    assert got.shape == (0, 13)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 64, 100, 2560, 2561])
def test_dot_f16_bit_identical(kernel, n):
    rng = np.random.default_rng(n)
    rows = rng.standard_normal((9, n)).astype(np.float16)
    rows[0, : min(n, 3)] = [np.float16(6e-8), np.float16(-0.0), np.float16(65504)][: min(n, 3)]
    x = rng.standard_normal(n).astype(np.float32)
    ref = _core._kernel_dot_f16("ref", rows.view(np.uint16), x)
    got = _core._kernel_dot_f16(kernel, rows.view(np.uint16), x)
    assert np.array_equal(ref.view(np.uint32), got.view(np.uint32))
    assert np.allclose(ref, rows.astype(np.float64) @ x.astype(np.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("w", [1, 2, 3, 5, 8, 9, 17])
@pytest.mark.parametrize("n", [1, 17, 64, 2561])
def test_dot_f16_batch_bit_identical(kernel, w, n):
    # Several hidden states against the same rows (batched decode's output head): each
    # (row, vector) dot equals the single-vector dot bit for bit, in every kernel.
    rng = np.random.default_rng(100 * w + n)
    rows = rng.standard_normal((7, n)).astype(np.float16)
    x = rng.standard_normal((w, n)).astype(np.float32)
    got = _core._kernel_dot_f16(kernel, rows.view(np.uint16), x)
    assert got.shape == (w, 7)
    for i in range(w):
        one = _core._kernel_dot_f16("ref", rows.view(np.uint16), x[i])
        assert np.array_equal(one.view(np.uint32), got[i].view(np.uint32))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 100, 128])
def test_dot_f32_bit_identical(kernel, n):
    rng = np.random.default_rng(n + 1)
    rows = rng.standard_normal((11, n)).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)
    ref = _core._kernel_dot_f32("ref", rows, x)
    got = _core._kernel_dot_f32(kernel, rows, x)
    assert np.array_equal(ref.view(np.uint32), got.view(np.uint32))
    assert np.allclose(ref, rows.astype(np.float64) @ x.astype(np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel", ["ref"] + KERNELS)
@pytest.mark.parametrize("n", [1, 31, 32, 33, 63, 64, 65, 2560])
def test_dot_i8_exact(kernel, n):
    rng = np.random.default_rng(n + 2)
    rows = rng.integers(-127, 128, size=(9, n)).astype(np.int8)
    rows[0] = 127
    rows[1] = -127
    x = rng.integers(-127, 128, size=n).astype(np.int8)
    x[: n // 2] = -127
    got = _core._kernel_dot_i8(kernel, rows, x)
    assert np.array_equal(got, rows.astype(np.int64) @ x.astype(np.int64))


@pytest.mark.parametrize("kernel", ["ref"] + KERNELS)
@pytest.mark.parametrize("w", [1, 2, 3, 4, 5, 8, 9, 12, 17])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 2560])
def test_dot_i8_batch_exact(kernel, w, n):
    # Several int8 hidden states against the same rows (the fast head's batched scoring pass).
    rng = np.random.default_rng(1000 * w + n)
    rows = rng.integers(-127, 128, size=(7, n)).astype(np.int8)
    rows[0] = 127
    x = rng.integers(-127, 128, size=(w, n)).astype(np.int8)
    x[0] = -127
    got = _core._kernel_dot_i8(kernel, rows, x)
    assert got.shape == (w, 7)
    assert np.array_equal(got, x.astype(np.int64) @ rows.astype(np.int64).T)


def test_unknown_kernel_rejected():
    with pytest.raises(ValueError, match="kernel 'nope'"):
        _core._kernel_gemm("nope", np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8), 0, 1)
