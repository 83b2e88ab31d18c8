"""Corrupted variants of a valid GGUF model file, for the robustness tests.

Each variant is (name, bytes). The generator knows the file's structure (read with the
`gguf` package): section boundaries, the position of every count, string length, type,
dimension and offset field, and of each tensor's data, so it can aim at all of them.
"""
from __future__ import annotations

import random
import struct
from typing import Iterator, List, Tuple

import gguf


def _layout(data: bytes, path: str):
    r = gguf.GGUFReader(path)
    fields = list(r.fields.values())
    kv = [f for f in fields if not f.name.startswith("GGUF.")]
    return r, kv


def variants(path: str, n_random: int = 400, seed: int = 0) -> Iterator[Tuple[str, bytes]]:
    """Yield corrupted variants of the file at `path` (roughly 60 + 2 * n_random + sections)."""
    data = open(path, "rb").read()
    r, kv = _layout(data, path)
    rng = random.Random(seed)
    size = len(data)
    tensors = list(r.tensors)
    data_start = min(t.data_offset for t in tensors)
    info_start = tensors[0].field.offset
    # Section boundaries: header, each KV, tensor-info table, each tensor's data.
    bounds = sorted({0, 4, 8, 16, 24, info_start, data_start, size - 1}
                    | {f.offset for f in kv} | {t.field.offset for t in tensors}
                    | {t.data_offset for t in tensors} | {t.data_offset + t.n_bytes for t in tensors})
    for b in bounds:
        for d in (-1, 0, 1):
            if 0 <= b + d < size:
                yield f"trunc@{b + d}", data[: b + d]
    for i in range(n_random):
        cut = rng.randrange(0, size)
        yield f"trunc-rand{i}@{cut}", data[:cut]

    def patch(off: int, fmt: str, value) -> bytes:
        b = bytearray(data)
        struct.pack_into(fmt, b, off, value)
        return bytes(b)

    # Header fields.
    yield "magic", patch(0, "<I", 0x46554748)
    for v in (0, 1, 2, 4, 0xFFFFFFFF):
        yield f"version={v}", patch(4, "<I", v)
    for v in (0, len(tensors) + 1, 2**31, 2**63, 2**64 - 1):
        yield f"tensor_count={v}", patch(8, "<Q", v)
    for v in (0, len(kv) + 1, 2**31, 2**64 - 1):
        yield f"kv_count={v}", patch(16, "<Q", v)
    # Each KV: key length, value type, string lengths / array counts.
    for f in kv:
        yield f"kv[{f.name}].keylen=huge", patch(f.offset, "<Q", 2**62)
        yield f"kv[{f.name}].keylen=+1", patch(f.offset, "<Q", len(f.name) + 1)
        type_off = f.offset + 8 + len(f.name.encode())
        for t in (13, 255, 9):
            yield f"kv[{f.name}].type={t}", patch(type_off, "<I", t)
        if f.types and f.types[0] in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY):
            yield f"kv[{f.name}].len=huge", patch(type_off + 4, "<Q", 2**63 - 5)
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                yield f"kv[{f.name}].elemtype=bad", patch(type_off + 4, "<I", 77)
                yield f"kv[{f.name}].count=huge", patch(type_off + 8, "<Q", 2**40)
    # Tensor infos: name length, n_dims, dims, type, offset; duplicates and overlaps.
    for i, t in enumerate(tensors):
        off = t.field.offset
        name_len = len(t.name.encode())
        nd_off = off + 8 + name_len
        n_dims = len(t.shape)
        dims_off = nd_off + 4
        type_off = dims_off + 8 * n_dims
        ofs_off = type_off + 4
        if i % 3 == 0 or i == len(tensors) - 1:
            yield f"t{i}.namelen=huge", patch(off, "<Q", 2**61)
            for nd in (0, 5, 2**31):
                yield f"t{i}.n_dims={nd}", patch(nd_off, "<I", nd)
            for dv in (0, 2**40, 2**63 - 1, 3):
                yield f"t{i}.dim0={dv}", patch(dims_off, "<Q", dv)
            for tv in (2, 14, 36, 39, 40, 1000):
                yield f"t{i}.type={tv}", patch(type_off, "<I", tv)
            rel = t.data_offset - data_start
            for ov in (rel + 1, rel + 32, size, 2**62, 0):
                yield f"t{i}.offset={ov}", patch(ofs_off, "<Q", ov)
        if i > 0:
            prev = tensors[i - 1].name.encode()
            if len(prev) == name_len:
                b = bytearray(data)
                b[off + 8: off + 8 + name_len] = prev
                yield f"t{i}.dup-name", bytes(b)
    # Bit flips anywhere, weighted toward the structured part of the file.
    for i in range(n_random):
        b = bytearray(data)
        region = rng.random()
        pos = rng.randrange(0, 24) if region < 0.1 else rng.randrange(24, data_start) if region < 0.7 else rng.randrange(data_start, size)
        for _ in range(rng.choice((1, 1, 2, 8))):
            p = min(size - 1, pos + rng.randrange(0, 8))
            b[p] ^= 1 << rng.randrange(8)
        yield f"flip{i}@{pos}", bytes(b)
