"""Tests of the C++ GGUF reader (bitnet._core.GGUFFile) and the decoders in cpp/quant.cpp.

Valid files are written with gguf-py's GGUFWriter and every dequantizer is compared bit for
bit with gguf.quants. Malformed files are built byte by byte with the small encoder below so
that each test breaks exactly one field. The layouts are those of REFERENCE.md 2.2-2.6.
"""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from bitnet import _core  # noqa: E402
from bitnet.errors import BitNetError, BitNetFileNotFoundError, BitNetFormatError  # noqa: E402

Q = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType
I2_S_ID = 36


# ---------------------------------------------------------------------------------------------
# Helpers: GGUFWriter files
# ---------------------------------------------------------------------------------------------

def write_gguf(path: Path, arch: str = "bitnet", kv=None, tensors=(), alignment: int | None = None) -> Path:
    """tensors: (name, array, raw_dtype or None, raw_shape or None)."""
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype, sub) in (kv or {}).items():
        w.add_key_value(key, value, vtype, sub_type=sub)
    for name, arr, raw_dtype, raw_shape in tensors:
        w.add_tensor(name, arr, raw_shape=raw_shape, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def pack_i2_s(t: np.ndarray, scale: float) -> np.ndarray:
    """Reference I2_S packer (REFERENCE.md 2.6): flattened row-major, 128-element blocks of
    32 bytes; byte j of a block holds elements j, j+32, j+64, j+96 at bits 7:6, 5:4, 3:2,
    1:0; code = t + 1. The f32 scale follows at byte n/4, then 28 bytes of padding."""
    flat = t.astype(np.int64).ravel() + 1
    assert flat.size % 128 == 0
    out = bytearray()
    for b in range(flat.size // 128):
        blk = flat[128 * b:128 * (b + 1)]
        for j in range(32):
            out.append(int((blk[j] << 6) | (blk[j + 32] << 4) | (blk[j + 64] << 2) | blk[j + 96]))
    out += struct.pack("<f", scale) + bytes(28)
    return np.frombuffer(bytes(out), dtype=np.uint8)


def i2s_tensor(name: str, t: np.ndarray, scale: float):
    packed = pack_i2_s(t, scale).view(np.int8)   # int8: GGUFWriter keeps raw_shape as given
    return (name, packed, I2_S_ID, t.shape)


def random_blocks(qtype, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random block bytes with a finite fp16 scale in the field(s) ggml reads as fp16."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d = (rng.standard_normal(n_blocks) * 0.1).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype in (Q.Q8_0, Q.Q4_0):
        raw[:, 0:2] = d
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = d
    elif qtype == Q.TQ1_0:
        raw[:, 52:54] = d
    elif qtype == Q.TQ2_0:
        raw[:, 64:66] = d
    return raw


# ---------------------------------------------------------------------------------------------
# Helpers: a byte-level encoder for malformed files
# ---------------------------------------------------------------------------------------------

def gstr(x) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_str(key, value) -> bytes:
    return kv(key, 8, gstr(value))


def kv_u32(key, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def ti(name, ne, type_id: int, offset: int) -> bytes:
    return (gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
            + struct.pack("<I", type_id) + struct.pack("<Q", offset))


def build(kvs=None, tis=(), data: bytes = b"", *, arch="llama", magic=b"GGUF", version=3,
          n_tensors=None, n_kv=None, alignment=32) -> bytes:
    kvs = [kv_str("general.architecture", arch)] if kvs is None else list(kvs)
    head = (magic + struct.pack("<I", version)
            + struct.pack("<Q", len(tis) if n_tensors is None else n_tensors)
            + struct.pack("<Q", len(kvs) if n_kv is None else n_kv))
    body = head + b"".join(kvs) + b"".join(tis)
    body += bytes(-len(body) % alignment)
    return body + data


def f32_tensor_bytes(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


@pytest.fixture
def put(tmp_path):
    counter = iter(range(10**6))

    def _put(data: bytes) -> str:
        p = tmp_path / f"f{next(counter)}.gguf"
        p.write_bytes(data)
        return str(p)
    return _put


def open_fails(path, pattern: str, exc=BitNetFormatError):
    with pytest.raises(exc, match=pattern) as info:
        _core.GGUFFile(path)
    assert info.value.code_name == "FILE"
    assert str(path) in str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------
# Metadata and structure
# ---------------------------------------------------------------------------------------------

def test_metadata_round_trip(tmp_path):
    kvs = {
        "t.u8": (200, VT.UINT8, None), "t.i8": (-100, VT.INT8, None),
        "t.u16": (65000, VT.UINT16, None), "t.i16": (-30000, VT.INT16, None),
        "t.u32": (4_000_000_000, VT.UINT32, None), "t.i32": (-2_000_000_000, VT.INT32, None),
        "t.u64": (2**64 - 1, VT.UINT64, None), "t.i64": (-(2**63), VT.INT64, None),
        "t.f32": (1e-5, VT.FLOAT32, None), "t.f64": (0.1, VT.FLOAT64, None),
        "t.bool": (True, VT.BOOL, None), "t.str": ("héllo", VT.STRING, None),
        "t.ai32": ([1, -2, 3], VT.ARRAY, VT.INT32),
        "t.au64": ([0, 2**64 - 1], VT.ARRAY, VT.UINT64),
        "t.af32": ([0.5, -1.25], VT.ARRAY, VT.FLOAT32),
        "t.abool": ([True, False, True], VT.ARRAY, VT.BOOL),
        "t.astr": (["a", "", "ü"], VT.ARRAY, VT.STRING),
    }
    p = write_gguf(tmp_path / "m.gguf", "bitnet-b1.58", kvs, alignment=64,
                   tensors=[("x", np.ones(3, np.float32), None, None)])
    f = _core.GGUFFile(p)
    md = f.metadata()
    assert md["general.architecture"] == "bitnet-b1.58"
    for key, (value, vtype, _) in kvs.items():
        if vtype == VT.FLOAT32:
            assert md[key] == float(np.float32(value))
        elif key == "t.af32":
            assert md[key] == [0.5, -1.25]
        else:
            assert md[key] == value, key
        assert type(md[key]) is type(value), key
    assert md["general.alignment"] == 64
    assert f.version == 3
    assert f.architecture == "bitnet-b1.58"
    assert f.dialect == "bitnet.cpp"
    assert f.alignment == 64
    assert f.data_offset % 64 == 0
    assert f.file_size == os.path.getsize(p)
    assert f.path == str(p)
    assert "bitnet-b1.58" in repr(f)


def test_tensor_listing_and_pathlike(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.zeros((4, 2, 64), dtype=np.float16)
    p = write_gguf(tmp_path / "t.gguf", "llama", tensors=[("a", a, None, None), ("b", b, None, None)])
    f = _core.GGUFFile(p)           # a pathlib.Path
    assert f.dialect == "upstream"
    ts = f.tensors()
    assert [t["name"] for t in ts] == ["a", "b"]
    assert ts[0] == {"name": "a", "type": "F32", "type_id": 0, "shape": (2, 3), "offset": 0, "nbytes": 24}
    assert ts[1]["type"] == "F16" and ts[1]["shape"] == (4, 2, 64) and ts[1]["nbytes"] == 4 * 2 * 64 * 2
    assert ts[1]["offset"] % f.alignment == 0
    np.testing.assert_array_equal(f.dequantize("a"), a)
    with pytest.raises(KeyError):
        f.dequantize("missing")


def test_version_2_and_empty_array_accepted(put):
    data = build([kv_str("general.architecture", "llama"), kv("empty", 9, struct.pack("<IQ", 4, 0)),
                  kv("nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 0, 1) + b"\x07"
                     + struct.pack("<IQ", 8, 0))],
                 [ti("w", [4], 0, 0)], f32_tensor_bytes(4), version=2)
    f = _core.GGUFFile(put(data))
    assert f.version == 2
    md = f.metadata()
    assert md["empty"] == []
    assert md["nested"] == [None, None]
    np.testing.assert_array_equal(f.dequantize("w"), np.arange(4, dtype=np.float32))


def test_typed_getters(put):
    data = build([kv_str("general.architecture", "llama"), kv("neg", 5, struct.pack("<i", -3)),
                  kv("big", 10, struct.pack("<Q", 2**64 - 1)), kv("f", 6, struct.pack("<f", 0.5)),
                  kv("one", 0, b"\x01"), kv("two", 0, b"\x02"), kv("b", 7, b"\x01")])
    f = _core.GGUFFile(put(data))
    assert f._get_uint("big") == 2**64 - 1
    assert f._get_uint("one") == 1
    assert f._get_uint("absent", 9) == 9
    with pytest.raises(BitNetFormatError, match=r"key 'neg'.*negative int32 -3"):
        f._get_uint("neg")
    with pytest.raises(BitNetFormatError, match=r"key 'f'.*found float32"):
        f._get_uint("f")
    with pytest.raises(BitNetFormatError, match=r"required key 'absent' is missing"):
        f._get_uint("absent")
    assert f._get_float("f") == 0.5
    assert f._get_float("neg") == -3.0
    with pytest.raises(BitNetFormatError, match=r"key 'general.architecture'.*found string"):
        f._get_float("general.architecture")
    assert f._get_string("general.architecture") == "llama"
    with pytest.raises(BitNetFormatError, match=r"key 'one'.*expected a string, found uint8"):
        f._get_string("one")
    assert f._get_bool("b", False) is True
    assert f._get_bool("one", False) is True
    assert f._get_bool("absent", True) is True
    with pytest.raises(BitNetFormatError, match=r"key 'two'.*uint8 2"):
        f._get_bool("two", False)


# ---------------------------------------------------------------------------------------------
# Scalar conversions
# ---------------------------------------------------------------------------------------------

def test_fp16_to_fp32_all_patterns():
    h = np.arange(65536, dtype=np.uint16)
    ours = _core._fp16_to_fp32(h)
    ref = h.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    # NaN payloads and signs survive.
    np.testing.assert_array_equal(ours[nan].view(np.uint32) >> 13 & 0x3FF, h[nan] & 0x3FF)


def test_fp32_to_fp16_round_to_nearest_even():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=500_000, dtype=np.uint64).astype(np.uint32)
    edge = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25,
                     2.0**-25 * 1.0000001, 3 * 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2**-11),
                     1.0 + 2**-11, 1.0 + 3 * 2**-11, np.inf, -np.inf, 1e-8, 6.1e-5],
                    dtype=np.float32)
    # Every fp16 value (as fp32) and every midpoint between neighbours.
    all_h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((all_h[:-1] + all_h[1:]) / 2).astype(np.float32)
    x = np.concatenate([bits.view(np.float32), edge, all_h.astype(np.float32), mids, -mids])
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    ours = _core._fp32_to_fp16(x).view(np.float16)
    nan = np.isnan(x)
    assert np.isnan(ours[nan]).all()
    np.testing.assert_array_equal(ours[~nan].view(np.uint16), ref[~nan].view(np.uint16))


def test_bf16_to_fp32():
    h = np.arange(65536, dtype=np.uint16)
    ours = _core._bf16_to_fp32(h)
    np.testing.assert_array_equal(ours.view(np.uint32), h.astype(np.uint32) << 16)


# ---------------------------------------------------------------------------------------------
# Dequantization against gguf.quants
# ---------------------------------------------------------------------------------------------

ROW_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q6_K, Q.TQ1_0, Q.TQ2_0]
SHAPES = [(256,), (3, 512), (2, 3, 768), (5, 1024)]


@pytest.mark.parametrize("qtype", ROW_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dequantize_matches_gguf(tmp_path, qtype, shape):
    rng = np.random.default_rng(hash((qtype.name, shape)) % 2**32)
    n_rows = int(np.prod(shape[:-1]))
    if qtype == Q.F32:
        raw = rng.standard_normal(shape).astype(np.float32)
        tensors = [("w", raw, None, None)]
        ref = raw
    elif qtype == Q.F16:
        raw = rng.standard_normal(shape).astype(np.float16)
        tensors = [("w", raw, None, None)]
        ref = raw.astype(np.float32)
    else:
        if qtype == Q.BF16:
            raw = gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            n_blocks = n_rows * shape[-1] // block
            raw = random_blocks(qtype, n_blocks, rng).reshape(*shape[:-1], shape[-1] // block * size)
        tensors = [("w", raw, qtype, None)]
        ref = gguf.quants.dequantize(raw, qtype)
    p = write_gguf(tmp_path / "d.gguf", "llama", tensors=tensors)
    f = _core.GGUFFile(p)
    (info,) = f.tensors()
    assert info["shape"] == shape and info["type"] == qtype.name and info["type_id"] == int(qtype)
    out = f.dequantize("w")
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.TQ1_0, Q.TQ2_0], ids=lambda q: q.name)
def test_dequantize_quantized_floats(tmp_path, qtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    raw = gguf.quants.quantize(x, qtype)
    f = _core.GGUFFile(write_gguf(tmp_path / "q.gguf", tensors=[("w", raw, qtype, None)]))
    np.testing.assert_array_equal(f.dequantize("w"), gguf.quants.dequantize(raw, qtype))


# ---------------------------------------------------------------------------------------------
# Ternary decoding
# ---------------------------------------------------------------------------------------------

def random_ternary(shape, rng, zero_rows=()):
    t = rng.integers(-1, 2, size=shape).astype(np.int8)
    for r in zero_rows:
        t[r] = 0
    return t


@pytest.mark.parametrize("qtype", [Q.TQ1_0, Q.TQ2_0], ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (4, 1536)])
def test_ternary_tq(tmp_path, qtype, shape):
    rng = np.random.default_rng(shape[1])
    beta = np.float32(0.0427)
    t = random_ternary(shape, rng, zero_rows=[0] if shape[0] > 1 else [])
    raw = gguf.quants.quantize(t.astype(np.float32) * beta, qtype)
    f = _core.GGUFFile(write_gguf(tmp_path / "t.gguf", tensors=[("w", raw, qtype, None)]))
    codes, scale, ternarised = f.ternary("w")
    assert codes.dtype == np.int8 and codes.shape == shape
    np.testing.assert_array_equal(codes, t)
    assert scale == float(np.float16(beta))
    assert ternarised is False
    np.testing.assert_array_equal(f.dequantize("w"), codes.astype(np.float32) * np.float32(scale))


@pytest.mark.parametrize("qtype", [Q.TQ1_0, Q.TQ2_0], ids=lambda q: q.name)
def test_ternary_tq_all_zero(tmp_path, qtype):
    raw = gguf.quants.quantize(np.zeros((2, 256), np.float32), qtype)
    f = _core.GGUFFile(write_gguf(tmp_path / "z.gguf", tensors=[("w", raw, qtype, None)]))
    codes, scale, ternarised = f.ternary("w")
    assert scale == 0.0 and not codes.any() and ternarised is False


@pytest.mark.parametrize("arch", ["bitnet-b1.58", "bitnet-25", "bitnet"])
@pytest.mark.parametrize("shape", [(2, 128), (3, 256), (5, 384)])
def test_ternary_i2_s(tmp_path, arch, shape):
    rng = np.random.default_rng(shape[0])
    t = random_ternary(shape, rng)
    scale = 0.8125
    f = _core.GGUFFile(write_gguf(tmp_path / "i.gguf", arch, tensors=[i2s_tensor("w", t, scale)]))
    (info,) = f.tensors()
    assert info["type"] == "I2_S" and info["type_id"] == 36 and info["shape"] == shape
    assert info["nbytes"] == t.size // 4 + 32
    codes, s, ternarised = f.ternary("w")
    np.testing.assert_array_equal(codes, t)
    assert s == scale and ternarised is False
    np.testing.assert_array_equal(f.dequantize("w"), t.astype(np.float32) * np.float32(scale))


def test_i2_s_block_layout_is_high_bits_first(tmp_path):
    # Element 0 -> +1 (code 2 in bits 7:6 of byte 0), element 96 -> -1 (code 0 in bits 1:0).
    t = np.zeros((1, 128), np.int8)
    t[0, 0] = 1
    t[0, 96] = -1
    packed = pack_i2_s(t, 1.0)
    assert packed[0] == (2 << 6) | (1 << 4) | (1 << 2) | 0
    f = _core.GGUFFile(write_gguf(tmp_path / "l.gguf", "bitnet-b1.58", tensors=[i2s_tensor("w", t, 1.0)]))
    np.testing.assert_array_equal(f.ternary("w")[0], t)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_ternary_float_effective_weights(tmp_path, dtype):
    rng = np.random.default_rng(3)
    t = random_ternary((6, 64), rng)
    beta = np.float32(0.0625 + 2**-10)  # exactly representable in fp16 and bf16
    w = t.astype(np.float32) * beta
    if dtype == "F32":
        tensors = [("w", w, None, None)]
    elif dtype == "F16":
        tensors = [("w", w.astype(np.float16), None, None)]
    else:
        tensors = [("w", gguf.quants.quantize(w, Q.BF16), Q.BF16, None)]
    f = _core.GGUFFile(write_gguf(tmp_path / "e.gguf", tensors=tensors))
    codes, scale, ternarised = f.ternary("w")
    np.testing.assert_array_equal(codes, t)
    assert scale == float(beta) and ternarised is False


def absmean_reference(w: np.ndarray):
    w = w.astype(np.float32)
    beta = np.float32(np.abs(w.astype(np.float64)).mean())
    beta = max(beta, np.float32(1e-5))
    t = np.clip(np.rint(w / beta), -1, 1).astype(np.int8)
    return t, float(beta)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_ternary_master_weight_absmean(tmp_path, caplog, dtype):
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((16, 96)) * 0.02).astype(np.float32)
    if dtype == "F32":
        tensors, wf = [("blk.0.attn_q.weight", w, None, None)], w
    elif dtype == "F16":
        tensors, wf = [("blk.0.attn_q.weight", w.astype(np.float16), None, None)], w.astype(np.float16).astype(np.float32)
    else:
        raw = gguf.quants.quantize(w, Q.BF16)
        tensors, wf = [("blk.0.attn_q.weight", raw, Q.BF16, None)], gguf.quants.dequantize(raw, Q.BF16)
    f = _core.GGUFFile(write_gguf(tmp_path / "m.gguf", tensors=tensors))
    _core._enable_logging()
    try:
        with caplog.at_level(logging.INFO, logger="bitnet"):
            codes, scale, ternarised = f.ternary("blk.0.attn_q.weight")
    finally:
        _core._disable_logging()
    t_ref, beta_ref = absmean_reference(wf)
    assert ternarised is True
    assert scale == beta_ref
    np.testing.assert_array_equal(codes, t_ref)
    assert any("blk.0.attn_q.weight" in r.getMessage() and "absmean" in r.getMessage() for r in caplog.records)


def test_ternarise_absmean_ties_and_clamp():
    # mean|w| = 1 -> W/beta = W; 0.5 and 2.5 round half to even, 3 clamps to 1.
    w = np.array([0.5, -0.5, 1.5, -1.5, 0.0, 3.0, -3.0, 0.5], np.float32)
    w = w / np.float32(np.abs(w).mean())
    t, beta = _core._ternarise_absmean(w)
    t_ref, beta_ref = absmean_reference(w)
    np.testing.assert_array_equal(t, t_ref)
    assert beta == beta_ref
    t, beta = _core._ternarise_absmean(np.full(8, 1e-7, np.float32))
    assert beta == float(np.float32(1e-5)) and not t.any()
    with pytest.raises(BitNetError, match="non-finite"):
        _core._ternarise_absmean(np.array([1.0, np.nan], np.float32))


# ---------------------------------------------------------------------------------------------
# Malformed files: the reader
# ---------------------------------------------------------------------------------------------

def valid_one_tensor(**kw) -> bytes:
    return build(tis=[ti("w", [8], 0, 0)], data=f32_tensor_bytes(8), **kw)


def test_builder_baseline_is_valid(put):
    f = _core.GGUFFile(put(valid_one_tensor()))
    np.testing.assert_array_equal(f.dequantize("w"), np.arange(8, dtype=np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _core.GGUFFile(tmp_path / "nope.gguf")
    assert isinstance(info.value, BitNetFileNotFoundError)
    assert "nope.gguf" in str(info.value) and "No such file" in str(info.value)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(BitNetFormatError, match="not a regular file"):
        _core.GGUFFile(tmp_path)


def test_empty_and_truncated_header(put):
    open_fails(put(b""), r"truncated header: the file has 0 bytes")
    open_fails(put(valid_one_tensor()[:10]), r"truncated header")


def test_truncated_inside_metadata(put):
    kvs = [kv_str("general.architecture", "llama"), kv_str("a", "x" * 200), kv_str("b", "y" * 50)]
    data = build(kvs)
    cut = 24 + len(kvs[0]) + len(kvs[1]) + 9 + 4 + 8 + 1   # key, type, length, 1 byte
    open_fails(put(data[:cut]), r"key 'b' string value: length 50 exceeds the 1 bytes left in the file")
    cut = 24 + len(kvs[0]) + len(kvs[1]) + 4
    open_fails(put(data[:cut]), r"metadata kv #2 key length: needs 8 bytes at offset \d+ but the file has only 4 left")


def test_bad_magic(put):
    open_fails(put(valid_one_tensor(magic=b"GGML")), r"not a GGUF file: bad magic \(bytes 47 47 4d 4c")
    open_fails(put(b"\x7fELF"), r"bad magic")


def test_version_1_rejected(put):
    open_fails(put(valid_one_tensor(version=1)), r"GGUF version 1 is not supported")


def test_unknown_and_big_endian_version(put):
    open_fails(put(valid_one_tensor(version=4)), r"unsupported GGUF version 4")
    open_fails(put(valid_one_tensor(version=0x03000000)), r"big-endian")


def test_huge_tensor_count(put):
    open_fails(put(valid_one_tensor(n_tensors=2**62)), r"tensor count 4611686018427387904 cannot fit")


def test_huge_kv_count(put):
    open_fails(put(valid_one_tensor(n_kv=2**40)), r"metadata kv count 1099511627776 cannot fit")


def test_huge_string_length(put):
    bad_key = struct.pack("<Q", 2**63) + b"general.architecture"
    open_fails(put(build([bad_key + struct.pack("<I", 8) + gstr("llama")])),
               r"metadata kv #0 key: length 9223372036854775808 exceeds the \d+ bytes left")
    bad_val = gstr("general.architecture") + struct.pack("<I", 8) + struct.pack("<Q", 2**40) + b"llama"
    open_fails(put(build([bad_val])), r"key 'general.architecture' string value: length 1099511627776")


def test_bad_value_type(put):
    data = build([kv_str("general.architecture", "llama"), kv("x.y", 13, b"\0" * 8)])
    open_fails(put(data), r"key 'x.y': unknown value type 13")


def test_bad_array(put):
    arch = kv_str("general.architecture", "llama")
    open_fails(put(build([arch, kv("a", 9, struct.pack("<IQ", 42, 1) + b"\0" * 8)])),
               r"key 'a': unknown array element type 42")
    open_fails(put(build([arch, kv("a", 9, struct.pack("<IQ", 4, 2**61))])),
               r"key 'a': array count 2305843009213693952 of uint32 cannot fit")
    deep = struct.pack("<IQ", 4, 0)
    for _ in range(9):
        deep = struct.pack("<IQ", 9, 1) + deep
    open_fails(put(build([arch, kv("a", 9, deep)])), r"key 'a' element 0.*nested deeper than 8")
    open_fails(put(build([arch, kv("b", 7, b"\x02")])), r"key 'b': bool value is neither 0 nor 1")


def test_duplicate_key(put):
    data = build([kv_str("general.architecture", "llama"), kv_u32("x", 1), kv_u32("x", 2)])
    open_fails(put(data), r"key 'x': duplicate key")


def test_architecture_required(put):
    open_fails(put(build([kv_u32("x", 1)])), r"required key 'general.architecture' is missing")
    open_fails(put(build([kv_u32("general.architecture", 1)])),
               r"key 'general.architecture': expected a string, found uint32")


@pytest.mark.parametrize("value,vtype,pattern", [
    (0, 4, r"0 is not a non-zero power of two"),
    (48, 4, r"48 is not a non-zero power of two"),
    (32, 10, r"expected uint32, found uint64"),
])
def test_bad_alignment(put, value, vtype, pattern):
    payload = struct.pack("<Q" if vtype == 10 else "<I", value)
    data = build([kv_str("general.architecture", "llama"), kv("general.alignment", vtype, payload)],
                 [ti("w", [8], 0, 0)], f32_tensor_bytes(8))
    open_fails(put(data), r"key 'general.alignment': " + pattern)


def test_offset_misaligned(put):
    data = build(tis=[ti("blk.0.attn_q.weight", [8], 0, 4)], data=f32_tensor_bytes(16))
    open_fails(put(data), r"tensor 'blk.0.attn_q.weight': offset 4 is not a multiple of the alignment 32")


def test_offset_beyond_eof(put):
    data = build(tis=[ti("w", [8], 0, 64)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w': data \[64, \+32 bytes\) runs past the end of the file")
    data = build(tis=[ti("w", [8], 0, 2**64 - 32)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w': data .* runs past the end of the file")
    data = build(tis=[ti("w", [16], 0, 0)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w': data \[0, \+64 bytes\) runs past the end")


def test_overlapping_tensors(put):
    data = build(tis=[ti("a", [16], 0, 0), ti("b", [8], 0, 32)], data=f32_tensor_bytes(16))
    open_fails(put(data), r"tensor 'b' \(offset 32\) overlaps tensor 'a' \(offset 0, 64 bytes\)")


def test_duplicate_tensor_name(put):
    data = build(tis=[ti("w", [8], 0, 0), ti("w", [8], 0, 32)], data=f32_tensor_bytes(16))
    open_fails(put(data), r"tensor 'w': duplicate tensor name")


def test_names_that_are_not_utf8(put):
    # Names need not be UTF-8: they read back losslessly, and messages escape them.
    data = build(tis=[ti(b"w\xff\x01", [8], 0, 0)], data=f32_tensor_bytes(8))
    f = _core.GGUFFile(put(data))
    (info,) = f.tensors()
    assert info["name"].encode("utf-8", "surrogateescape") == b"w\xff\x01"
    np.testing.assert_array_equal(f.dequantize(info["name"]), np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(f.dequantize(b"w\xff\x01"), np.arange(8, dtype=np.float32))
    data = build(tis=[ti(b"w\xff\x01", [8], 0, 0), ti(b"w\xff\x01", [8], 0, 32)], data=f32_tensor_bytes(16))
    open_fails(put(data), r"tensor 'w\\xff\\x01': duplicate tensor name")


def test_empty_tensor_name(put):
    open_fails(put(build(tis=[ti("", [8], 0, 0)], data=f32_tensor_bytes(8))), r"tensor info #0: empty tensor name")


@pytest.mark.parametrize("ne,pattern", [
    ([], r"n_dims 0 is outside 1..4"),
    ([8, 1, 1, 1, 1], r"n_dims 5 is outside 1..4"),
    ([8, 0], r"dim 1 is 0"),
    ([2**32, 2**32], r"element count \(product of the dims\) overflows int64"),
    ([2**63], r"dim 0 is 9223372036854775808, larger than INT64_MAX"),
])
def test_bad_dims(put, ne, pattern):
    data = build(tis=[ti("w", ne, 0, 0)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w'.*" + pattern)


def test_huge_dims_fit_int64_but_not_file(put):
    data = build(tis=[ti("w", [2**30, 2**30], 0, 0)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w': data \[0, \+4611686018427387904 bytes\) runs past the end")
    data = build(tis=[ti("w", [2**31, 2**31], 0, 0)], data=f32_tensor_bytes(8))
    open_fails(put(data), r"tensor 'w' \(F32\): byte size overflows size_t")


@pytest.mark.parametrize("arch,type_id,pattern", [
    ("llama", 99, r"unknown type id 99"),
    ("llama", 3, r"type id 3 \(Q4_1\) is not supported"),
    ("llama", 36, r"type id 36 is I2_S in bitnet.cpp files but IQ4_NL_4_4.*architecture 'llama'.*ambiguous"),
    ("bitnet-b1.58", 37, r"type id 37 \(I8_S"),
    ("bitnet-b1.58", 38, r"type id 38 is TL1: TL1/TL2 lookup-table layouts depend on build-time tuning and are not "
                         r"supported; re-convert with --type i2_s or tq2_0"),
    ("bitnet-b1.58", 39, r"type id 39 is TL2: TL1/TL2 lookup-table layouts depend on build-time tuning"),
    ("llama", 39, r"type id 39 \(MXFP4 in upstream ggml\) is not supported"),
    ("bitnet", 39, r"type id 39 \(MXFP4 in upstream ggml; TL2 if written by bitnet.cpp\)"),
])
def test_bad_type_ids(put, arch, type_id, pattern):
    data = build(tis=[ti("blk.0.ffn_up.weight", [256, 2], type_id, 0)], data=bytes(4096), arch=arch)
    open_fails(put(data), r"tensor 'blk.0.ffn_up.weight': " + pattern)


def test_block_size_rules(put):
    open_fails(put(build(tis=[ti("w", [48], 8, 0)], data=bytes(64))),
               r"tensor 'w' \(Q8_0\): ne0 48 is not a multiple of the Q8_0 block size 32")
    open_fails(put(build(tis=[ti("w", [128, 2], 35, 0)], data=bytes(256))),
               r"ne0 128 is not a multiple of the TQ2_0 block size 256")
    open_fails(put(build(tis=[ti("w", [64, 3], I2_S_ID, 0)], data=bytes(256), arch="bitnet-b1.58")),
               r"I2_S needs an element count that is a multiple of 128, got 192")


def test_truncation_and_mutation_never_crash(put):
    """Every prefix of a small valid file, and many single-byte mutations, either parse or
    raise BitNetFormatError (the ASan build runs this too)."""
    t = random_ternary((2, 256), np.random.default_rng(5))
    raw = gguf.quants.quantize(t.astype(np.float32) * np.float32(0.25), Q.TQ2_0)
    data = build([kv_str("general.architecture", "bitnet-b1.58"),
                  kv("a", 9, struct.pack("<IQ", 8, 2) + gstr("x") + gstr("yz"))],
                 [ti("q", [256, 2], 35, 0), ti("s", [128, 2], I2_S_ID, 160)],
                 raw.tobytes() + bytes(160 - raw.nbytes) + pack_i2_s(random_ternary((2, 128), np.random.default_rng(6)), 0.5).tobytes())
    f = _core.GGUFFile(put(data))
    assert [x["name"] for x in f.tensors()] == ["q", "s"]
    for cut in range(len(data)):
        with pytest.raises(BitNetFormatError):
            _core.GGUFFile(put(data[:cut]))
    rng = np.random.default_rng(0)
    for _ in range(400):
        mutated = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        mutated[pos] = int(rng.integers(0, 256))
        try:
            g = _core.GGUFFile(put(bytes(mutated)))
        except BitNetFormatError:
            continue
        for info in g.tensors():
            for op in (g.dequantize, g.ternary):
                try:
                    op(info["name"])
                except BitNetFormatError:
                    pass


# ---------------------------------------------------------------------------------------------
# Malformed files: ternary decoding
# ---------------------------------------------------------------------------------------------

def tq2_file(tmp_path, raw, name="blk.3.ffn_down.weight"):
    return _core.GGUFFile(write_gguf(tmp_path / "b.gguf", tensors=[(name, raw, Q.TQ2_0, None)]))


def test_tq2_0_differing_block_scales(tmp_path):
    t = np.ones((2, 512), np.float32)
    w = t * np.float32(0.5)
    w[1, 256:] = 0.25      # the fourth block has another absmax
    f = tq2_file(tmp_path, gguf.quants.quantize(w, Q.TQ2_0))
    with pytest.raises(BitNetFormatError, match=r"tensor 'blk.3.ffn_down.weight': block 0 \(row 0, cols 0..255\) "
                                                 r"has scale 0.5 but block 3 \(row 1, cols 256..511\) has scale 0.25: "
                                                 r"not a BitNet b1.58 per-tensor ternary matrix"):
        f.ternary("blk.3.ffn_down.weight")
    # dequantize() stays a plain per-block decode
    np.testing.assert_array_equal(f.dequantize("blk.3.ffn_down.weight"), w)


def test_tq2_0_zero_blocks_do_not_vote(tmp_path):
    w = np.zeros((2, 512), np.float32)
    w[0, :256] = 0.5
    w[1, 256:] = -0.5
    raw = gguf.quants.quantize(w, Q.TQ2_0)
    # raw is [2 rows, 2 blocks * 66 bytes]; block 1 (row 0, second half) is all zero: give it
    # another scale, which must not count because it has no non-zero codes.
    raw[0, 66 + 64:66 + 66] = np.frombuffer(np.float16(0.125).tobytes(), np.uint8)
    codes, scale, _ = tq2_file(tmp_path, raw).ternary("blk.3.ffn_down.weight")
    assert scale == 0.5
    np.testing.assert_array_equal(codes, np.sign(w).astype(np.int8))


def test_tq2_0_code_3(tmp_path):
    raw = gguf.quants.quantize(np.full((1, 256), 0.5, np.float32), Q.TQ2_0)
    raw[0, 5] |= 0b11 << 4   # element 2*32 + 5 = 69
    with pytest.raises(BitNetFormatError, match=r"block 0 \(row 0, cols 0..255\) element 69 has the invalid TQ2_0 code 3"):
        tq2_file(tmp_path, raw).ternary("blk.3.ffn_down.weight")


@pytest.mark.parametrize("d,pattern", [(np.float16(np.nan), "non-finite scale"),
                                       (np.float16(np.inf), "non-finite scale"),
                                       (np.float16(-0.5), "negative scale -0.5")])
def test_tq2_0_bad_scale(tmp_path, d, pattern):
    raw = gguf.quants.quantize(np.full((1, 256), 0.5, np.float32), Q.TQ2_0)
    raw[0, 64:66] = np.frombuffer(np.array(d, np.float16).tobytes(), np.uint8)
    with pytest.raises(BitNetFormatError, match=pattern):
        tq2_file(tmp_path, raw).ternary("blk.3.ffn_down.weight")


def test_tq1_0_non_canonical_byte(tmp_path):
    raw = gguf.quants.quantize(np.full((1, 256), 0.5, np.float32), Q.TQ1_0)
    raw[0, 7] = 1    # 1 is not ceil(v * 256 / 243) for any v
    f = _core.GGUFFile(write_gguf(tmp_path / "c.gguf", tensors=[("w", raw, Q.TQ1_0, None)]))
    with pytest.raises(BitNetFormatError, match=r"tensor 'w': block 0 .* byte 7 \(0x01\) is not a valid TQ1_0"):
        f.ternary("w")


def test_i2_s_code_3(tmp_path):
    t = np.zeros((2, 128), np.int8)
    packed = pack_i2_s(t, 1.0).copy()
    packed[32 + 3] |= 0b11 << 2          # block 1, byte 3, bits 3:2 -> element 128 + 64 + 3
    f = _core.GGUFFile(write_gguf(tmp_path / "s.gguf", "bitnet-b1.58",
                                  tensors=[("w", packed.view(np.int8), I2_S_ID, (2, 128))]))
    with pytest.raises(BitNetFormatError, match=r"tensor 'w': element 195 \(row 1, col 67\) has the invalid I2_S code 3"):
        f.ternary("w")


@pytest.mark.parametrize("scale,pattern", [(float("nan"), "is nan"), (float("inf"), "is inf"), (-1.0, "is -1")])
def test_i2_s_bad_scale(tmp_path, scale, pattern):
    t = random_ternary((1, 128), np.random.default_rng(0))
    f = _core.GGUFFile(write_gguf(tmp_path / "n.gguf", "bitnet-b1.58", tensors=[i2s_tensor("w", t, scale)]))
    with pytest.raises(BitNetFormatError, match=r"tensor 'w': the I2_S scale \(f32 at byte 32 of the tensor data\) "
                                                 + pattern):
        f.ternary("w")


def test_i2_s_zero_scale_is_canonical_zero(tmp_path):
    t = random_ternary((1, 128), np.random.default_rng(0))
    f = _core.GGUFFile(write_gguf(tmp_path / "z.gguf", "bitnet-b1.58", tensors=[i2s_tensor("w", t, 0.0)]))
    codes, scale, _ = f.ternary("w")
    assert scale == 0.0 and not codes.any()


def test_float_weight_not_finite(tmp_path):
    w = np.zeros((2, 8), np.float16)
    w[1, 3] = np.inf
    f = _core.GGUFFile(write_gguf(tmp_path / "inf.gguf", tensors=[("w", w, None, None)]))
    with pytest.raises(BitNetFormatError, match=r"tensor 'w': element 11 \(row 1, col 3\) is inf; weights must be finite"):
        f.ternary("w")


def test_ternary_wrong_type_or_rank(tmp_path):
    raw = gguf.quants.quantize(np.ones((2, 64), np.float32), Q.Q8_0)
    f = _core.GGUFFile(write_gguf(tmp_path / "r.gguf", tensors=[
        ("q", raw, Q.Q8_0, None), ("v", np.ones(8, np.float32), None, None),
        ("c", np.ones((2, 2, 8), np.float32), None, None)]))
    with pytest.raises(BitNetFormatError, match=r"tensor 'q': type Q8_0 cannot hold a BitNet ternary matrix"):
        f.ternary("q")
    with pytest.raises(BitNetFormatError, match=r"tensor 'v': a ternary weight must be a 2-D matrix"):
        f.ternary("v")
    with pytest.raises(BitNetFormatError, match=r"tensor 'c': a ternary weight must be a 2-D matrix"):
        f.ternary("c")
    with pytest.raises(KeyError):
        f.ternary("nope")
