"""The emulated card driver (sim/driver_emu.cpp) spoken to in raw bytes, as a user-space
program would: the structs are packed here with ``struct`` from docs/DEVICE_ABI.md, the weight
rows with NumPy from the documented slot layout, and every malformed request of the
document's list must come back with its errno and leave the card as it was."""
from __future__ import annotations

import errno
import math
import struct

import numpy as np
import pytest

from bitnet import _core

L = _core.abi_layout()
REQ = {name: d["request"] for name, d in L["ioctls"].items()}
C = L["constants"]
STATE = L["states"]
CARD_ERR = L["card_errors"]
POLLIN, POLLERR = 0x001, 0x008

# Struct formats, little-endian, field for field as in docs/DEVICE_ABI.md section 4.
F_INFO = "<4I8Q6IQ2I2Q4I32s32s4Q"
F_STATUS = "<4I"
F_PERF = "<3Q2I"
F_LOAD = "<4If3I2Q"
F_FREE = "<4I"
F_SLOT_INFO = "<4IfIQ"
F_OP = "<2I3Q"
F_MATMUL_HEAD = "<2Q6I"
F_PERF_EXT = "<2I9Q2I5Q"
F_FAULT = "<4I"
F_INFER = "<2Q4I"
F_WEIGHT = "<QII"
F_HEADER = "<3If"


def test_struct_formats_match_the_header():
    sizes = {s: d["size"] for s, d in L["structs"].items()}
    assert struct.calcsize(F_INFO) == sizes["bitnet_info"]
    assert struct.calcsize(F_STATUS) == sizes["bitnet_status"]
    assert struct.calcsize(F_PERF) == sizes["bitnet_perf"]
    assert struct.calcsize(F_LOAD) == sizes["bitnet_load_slot"]
    assert struct.calcsize(F_FREE) == sizes["bitnet_free_slots"]
    assert struct.calcsize(F_SLOT_INFO) == sizes["bitnet_slot_info"]
    assert struct.calcsize(F_OP) == sizes["bitnet_matmul_op"]
    assert struct.calcsize(F_MATMUL_HEAD) + C["MAX_OPS"] * struct.calcsize(F_OP) == sizes["bitnet_matmul_cmd"]
    assert struct.calcsize(F_PERF_EXT) == sizes["bitnet_perf_ext"]
    assert struct.calcsize(F_FAULT) == sizes["bitnet_fault"]
    assert struct.calcsize(F_INFER) == sizes["bitnet_inference_cmd"]
    assert struct.calcsize(F_WEIGHT) == sizes["bitnet_weight_cmd"]
    assert struct.calcsize(F_HEADER) == sizes["bitnet_slot_header"]


def ioc(direction: int, nr: int, size: int, magic: int = ord("B")) -> int:
    return (direction << 30) | (size << 16) | (magic << 8) | nr


def row_bytes(k: int) -> int:
    return -(-k // 64) * 16


def pack_slot(t: np.ndarray) -> np.ndarray:
    """The slot layout of docs/DEVICE_ABI.md section 7."""
    n, k = t.shape
    kpad = -(-k // 64) * 64
    c = np.ones((n, kpad), np.uint8)
    c[:, :k] = (t + 1).astype(np.uint8)
    g = c.reshape(n, kpad // 64, 4, 16)
    return (g[:, :, 0] | g[:, :, 1] << 2 | g[:, :, 2] << 4 | g[:, :, 3] << 6).reshape(n, kpad // 4)


def engine(q: np.ndarray, sx: np.ndarray, t: np.ndarray, beta: float):
    """NUMERICS.md section 3: acc exact, y = (acc / s_x) * beta in fp32."""
    acc = q.astype(np.int64) @ t.T.astype(np.int64)
    y = (acc.astype(np.float32) / sx[:, None].astype(np.float32)) * np.float32(beta)
    return acc.astype(np.int32), y


class Card:
    """A user-space view of one emulated card: fd, mapped buffer, and packed requests."""

    def __init__(self, **kw):
        self.emu = _core._DriverEmu(**kw)
        fd, err = self.emu.open(self.emu.node)
        assert fd >= 0 and err == 0
        self.fd = fd
        self.info = self.get_info()
        assert self.emu.mmap(fd, self.info["mmap_size"]) == (0, 0)
        self.mem = self.emu.region()
        self.slots = {}

    # -- raw
    def ioctl(self, req, buf=None, fd=None):
        return self.emu.ioctl(self.fd if fd is None else fd, req, buf)

    def call(self, req, fmt, *fields):
        buf = bytearray(struct.pack(fmt, *fields)) if fmt else None
        return self.ioctl(req, buf)

    # -- queries
    def get_info(self):
        buf = bytearray(struct.calcsize(F_INFO))
        assert self.ioctl(REQ["GET_INFO"], buf) == (0, 0)
        v = struct.unpack(F_INFO, buf)
        names = ["abi_major", "abi_minor", "hw_version", "capabilities", "mmap_size", "input_offset", "input_size",
                 "output_offset", "output_size", "weight_offset", "weight_size", "weight_capacity", "max_slots",
                 "max_slot_id", "max_ops", "max_rows", "max_k", "max_n", "clock_hz", "lanes", "lane_width",
                 "ddr_bytes_per_s", "dma_bytes_per_s", "dma_setup_cycles", "pipeline_cycles", "dma_align",
                 "reserved0", "board", "engine"]
        d = dict(zip(names, v))
        d["board"] = d["board"].rstrip(b"\0").decode()
        d["engine"] = d["engine"].rstrip(b"\0").decode()
        d["reserved"] = v[-4:]
        return d

    def status(self):
        buf = bytearray(16)
        assert self.ioctl(REQ["GET_STATUS"], buf) == (0, 0)
        return dict(zip(["state", "current_layer", "tokens_processed", "error_code"], struct.unpack(F_STATUS, buf)))

    def perf_ext(self, flags=0):
        buf = bytearray(struct.pack(F_PERF_EXT, flags, 0, *([0] * 9), 0, 0, *([0] * 5)))
        assert self.ioctl(REQ["GET_PERF_EXT"], buf) == (0, 0)
        v = struct.unpack(F_PERF_EXT, buf)
        keys = ["total_cycles", "dma_cycles", "compute_cycles", "commands", "matmuls", "macs", "dma_bytes",
                "weight_bytes_read", "weight_bytes_used"]
        d = dict(zip(keys, v[2:11]))
        d["slots_used"] = v[11]
        return d

    def slot_info(self, slot, flags=0):
        buf = bytearray(struct.pack(F_SLOT_INFO, slot, flags, 0, 0, 0.0, 0, 0))
        rc = self.ioctl(REQ["SLOT_INFO"], buf)
        if rc != (0, 0):
            return rc
        _, _, n, k, scale, _, nbytes = struct.unpack(F_SLOT_INFO, buf)
        return dict(n=n, k=k, scale=scale, bytes=nbytes)

    # -- requests
    def load(self, slot, t, scale, *, row_begin=0, row_count=None, src_offset=None, src_size=None, n=None, k=None,
             flags=0, reserved=0, packed=None):
        n = t.shape[0] if n is None else n
        k = t.shape[1] if k is None else k
        row_count = t.shape[0] - row_begin if row_count is None else row_count
        rows = pack_slot(t)[row_begin:row_begin + row_count] if packed is None else packed
        off = self.info["weight_offset"] if src_offset is None else src_offset
        data = rows.tobytes()
        if 0 <= off and off + len(data) <= len(self.mem):
            self.mem[off:off + len(data)] = np.frombuffer(data, np.uint8)
        size = row_count * row_bytes(k) if src_size is None else src_size
        rc = self.call(REQ["LOAD_SLOT"], F_LOAD, slot, flags, n, k, scale, row_begin, row_count, reserved, off, size)
        if rc == (0, 0) and row_begin + row_count == n:
            self.slots[slot] = (t.copy(), scale)
        return rc

    def matmul_struct(self, q, ops, *, rows=None, k=None, stride=None, act_offset=None, scale_offset=None,
                      n_ops=None, flags=0, reserved=0):
        """Write activations and scales into the input region; return the packed command."""
        B, K = q.shape
        rows = B if rows is None else rows
        k = K if k is None else k
        stride = K if stride is None else stride
        act = self.info["input_offset"] if act_offset is None else act_offset
        sxo = self.info["input_offset"] + (1 << 16) if scale_offset is None else scale_offset
        for r in range(B):
            self.mem[act + r * stride: act + r * stride + K] = q[r].view(np.uint8)
        head = struct.pack(F_MATMUL_HEAD, act, sxo, rows, k, stride, len(ops) if n_ops is None else n_ops, flags,
                           reserved)
        body = b"".join(struct.pack(F_OP, *op) for op in ops)
        body += bytes(struct.calcsize(F_OP) * (C["MAX_OPS"] - len(ops)))
        return sxo, bytearray(head + body)

    def valid_matmul(self, seed=0):
        """Run slots 0 and 1 on a fresh batch; check y and acc bit for bit; True if all right."""
        rng = np.random.default_rng(seed)
        q = rng.integers(-128, 128, size=(3, 100)).astype(np.int8)
        sx = (rng.random(3).astype(np.float32) + np.float32(0.5))
        out = self.info["output_offset"]
        ops = [(0, C["OP_ACC"], out, out + 4096, 0), (1, 0, out + 8192, 0, 0)]
        sxo, cmd = self.matmul_struct(q, ops)
        self.mem[sxo:sxo + 12] = sx.view(np.uint8)
        assert self.ioctl(REQ["MATMUL"], cmd) == (0, 0)
        assert self.emu.poll(self.fd, 5000) == (1, POLLIN, 0)
        assert self.ioctl(REQ["WAIT_COMPLETE"]) == (0, 0)
        st = self.status()
        assert st["state"] == STATE["IDLE"] and st["error_code"] == 0
        t0, b0 = self.slots[0]
        t1, b1 = self.slots[1]
        acc0, y0 = engine(q, sx, t0, b0)
        _, y1 = engine(q, sx, t1, b1)
        got_y0 = self.mem[out:out + y0.nbytes].view(np.float32).reshape(y0.shape)
        got_acc0 = self.mem[out + 4096:out + 4096 + acc0.nbytes].view(np.int32).reshape(acc0.shape)
        got_y1 = self.mem[out + 8192:out + 8192 + y1.nbytes].view(np.float32).reshape(y1.shape)
        return np.array_equal(got_y0, y0) and np.array_equal(got_acc0, acc0) and np.array_equal(got_y1, y1)

    def snapshot(self):
        slots = {s: self.emu.read_slot(s) for s in self.emu.slots(0, 64)}
        return self.status(), self.perf_ext(), {s: (t.tobytes(), b) for s, (t, b) in slots.items()}


def make_card(**kw):
    kw.setdefault("weight_capacity", 16384)
    card = Card(**kw)
    rng = np.random.default_rng(7)
    assert card.load(0, rng.integers(-1, 2, size=(40, 100)).astype(np.int8), 0.5) == (0, 0)
    assert card.load(1, rng.integers(-1, 2, size=(24, 100)).astype(np.int8), 0.25) == (0, 0)
    return card


# ---------------------------------------------------------------------------------------------
# well-formed traffic
# ---------------------------------------------------------------------------------------------

def test_info_reports_the_vibee_layout_and_the_profile():
    card = Card(profile="vibee-vcu118")
    i = card.info
    assert (i["abi_major"], i["abi_minor"]) == (C["ABI_MAJOR"], C["ABI_MINOR"]) == (2, 1)
    assert i["mmap_size"] == C["MMAP_DEFAULT_SIZE"] == 256 << 20
    assert (i["input_offset"], i["input_size"]) == (0, 64 << 20)
    assert (i["output_offset"], i["output_size"]) == (64 << 20, 64 << 20)
    assert (i["weight_offset"], i["weight_size"]) == (128 << 20, 128 << 20)
    assert i["capabilities"] & C["CAP_MATMUL"] and i["capabilities"] & C["CAP_EMULATED"]
    assert not i["capabilities"] & C["CAP_LEGACY_INFERENCE"]
    assert (i["clock_hz"], i["lanes"], i["lane_width"]) == (300_000_000, 32, 27)
    assert i["ddr_bytes_per_s"] == 38_400_000_000 and i["board"] == "vibee-vcu118"
    assert i["dma_align"] == 64 and i["max_ops"] == C["MAX_OPS"] == 8 and i["reserved"] == (0, 0, 0, 0)


def test_loaded_slot_holds_the_documented_layout():
    card = make_card()
    for s in (0, 1):
        t, beta = card.emu.read_slot(s)
        assert np.array_equal(t, card.slots[s][0]) and t.dtype == np.int8
        assert beta == card.slots[s][1]
    assert card.slot_info(0) == dict(n=40, k=100, scale=0.5, bytes=40 * row_bytes(100))
    assert card.perf_ext()["weight_bytes_used"] == 64 * row_bytes(100)
    assert card.perf_ext()["slots_used"] == 2
    assert card.valid_matmul()


def test_chunked_load_keeps_the_old_matrix_until_the_last_row():
    card = make_card()
    rng = np.random.default_rng(3)
    t = rng.integers(-1, 2, size=(40, 100)).astype(np.int8)
    old = card.emu.read_slot(0)[0]
    assert card.load(0, t, 0.5, row_begin=0, row_count=16) == (0, 0)
    assert np.array_equal(card.emu.read_slot(0)[0], old)
    assert card.load(0, t, 0.5, row_begin=16, row_count=16) == (0, 0)
    assert card.load(0, t, 0.5, row_begin=32, row_count=8) == (0, 0)
    assert np.array_equal(card.emu.read_slot(0)[0], t)
    assert card.valid_matmul()


def test_legacy_load_weights_blob():
    card = make_card()
    t = np.random.default_rng(5).integers(-1, 2, size=(24, 100)).astype(np.int8)
    off = card.info["weight_offset"]
    blob = struct.pack(F_HEADER, C["SLOT_MAGIC"], 24, 100, 0.25) + pack_slot(t).tobytes()
    card.mem[off:off + len(blob)] = np.frombuffer(blob, np.uint8)
    assert card.call(REQ["LOAD_WEIGHTS"], F_WEIGHT, off, 1, len(blob)) == (0, 0)
    card.slots[1] = (t, 0.25)
    assert np.array_equal(card.emu.read_slot(1)[0], t)
    assert card.valid_matmul()


def test_strided_activations_and_single_product():
    card = make_card()
    rng = np.random.default_rng(11)
    q = rng.integers(-128, 128, size=(5, 100)).astype(np.int8)
    sx = np.full(5, 2.0, np.float32)
    out = card.info["output_offset"]
    sxo, cmd = card.matmul_struct(q, [(1, 0, out, 0, 0)], stride=128)
    card.mem[sxo:sxo + 20] = sx.view(np.uint8)
    assert card.ioctl(REQ["MATMUL"], cmd) == (0, 0)
    assert card.ioctl(REQ["WAIT_COMPLETE"]) == (0, 0)
    _, y = engine(q, sx, *card.slots[1])
    assert np.array_equal(card.mem[out:out + y.nbytes].view(np.float32).reshape(y.shape), y)
    assert card.status()["tokens_processed"] == 5 and card.status()["current_layer"] == 1


def test_free_slots_and_perf_clear():
    card = make_card()
    assert card.valid_matmul()
    p = card.perf_ext()
    assert p["commands"] == 1 and p["matmuls"] == 2 and p["macs"] == 3 * 64 * 100
    buf = bytearray(struct.calcsize(F_PERF))
    assert card.ioctl(REQ["GET_PERF"], buf) == (0, 0)
    assert struct.unpack(F_PERF, buf)[:4] == (p["total_cycles"], p["dma_cycles"], p["compute_cycles"], 0)
    card.perf_ext(flags=C["PERF_CLEAR"])
    cleared = card.perf_ext()
    assert cleared["total_cycles"] == 0 and cleared["weight_bytes_used"] == p["weight_bytes_used"]
    assert card.call(REQ["FREE_SLOTS"], F_FREE, 1, 2, 0, 0) == (0, 0)
    assert card.emu.slots() == [0]
    assert card.slot_info(1) == (-1, errno.ENOENT)
    assert card.call(REQ["FREE_SLOTS"], F_FREE, 0, 0xFFFFFFFF, 0, 0) == (0, 0)
    assert card.emu.slots() == [] and card.perf_ext()["slots_used"] == 0


# ---------------------------------------------------------------------------------------------
# malformed requests: docs/DEVICE_ABI.md section 10, rows 1-52
# ---------------------------------------------------------------------------------------------

def _mm(card, **kw):
    """A valid two-product MATMUL (or one with the given overrides) sent to the card."""
    q = np.ones((3, 100), np.int8)
    out = card.info["output_offset"]
    ops = kw.pop("ops", [(0, 0, out, 0, 0), (1, 0, out + 8192, 0, 0)])
    sxo, cmd = card.matmul_struct(q, ops, **kw)
    return card.ioctl(REQ["MATMUL"], cmd)


def _ld(card, **kw):
    t = kw.pop("t", np.zeros((4, 100), np.int8))
    scale = kw.pop("scale", 1.0)
    return card.load(kw.pop("slot", 5), t, scale, **kw)


def _bad_code(card):
    packed = pack_slot(np.zeros((4, 100), np.int8))
    packed[2, 3] |= 0x03   # element 3 of row 2: code 1 | 3 = 3
    return _ld(card, packed=packed)


def _bad_padding(card):
    packed = pack_slot(np.zeros((4, 100), np.int8))
    packed[0, 16 + 15] = (packed[0, 16 + 15] & 0x3F) | (2 << 6)   # element 64+15+48 = 127 >= k: padding
    return _ld(card, packed=packed)


def _legacy(card, magic=None, size_delta=0):
    off = card.info["weight_offset"]
    t = np.zeros((4, 100), np.int8)
    blob = struct.pack(F_HEADER, C["SLOT_MAGIC"] if magic is None else magic, 4, 100, 1.0) + pack_slot(t).tobytes()
    card.mem[off:off + len(blob)] = np.frombuffer(blob, np.uint8)
    return card.call(REQ["LOAD_WEIGHTS"], F_WEIGHT, off, 5, len(blob) + size_delta)


def _infer(card, input_offset=0):
    out = card.info["output_offset"]
    return card.call(REQ["START_INFERENCE"], F_INFER, input_offset, out, 64, 4096, 16, 0)


def _mmap(card, **kw):
    return card.emu.mmap(card.fd, kw.pop("length", card.info["mmap_size"]), **kw)


def _second_open(card):
    return card.emu.open(card.emu.node)


MALFORMED = [
    # (row of the document's table, description, request, errno)
    (1, "ioctl on a closed descriptor", lambda c: c.ioctl(REQ["GET_STATUS"], bytearray(16), fd=c.fd + 1), errno.EBADF),
    (2, "unknown command number", lambda c: c.ioctl(ioc(2, 99, 16), bytearray(16)), errno.ENOTTY),
    (3, "wrong magic", lambda c: c.ioctl(ioc(2, 8, 248, ord("X")), bytearray(248)), errno.ENOTTY),
    (4, "GET_INFO with a wrong size", lambda c: c.ioctl(ioc(2, 8, 240), bytearray(248)), errno.ENOTTY),
    (5, "GET_INFO with the wrong direction", lambda c: c.ioctl(ioc(1, 8, 248), bytearray(248)), errno.ENOTTY),
    (6, "GET_INFO with NULL", lambda c: c.ioctl(REQ["GET_INFO"], None), errno.EFAULT),
    (7, "LOAD_SLOT with NULL", lambda c: c.ioctl(REQ["LOAD_SLOT"], None), errno.EFAULT),
    (8, "MATMUL with NULL", lambda c: c.ioctl(REQ["MATMUL"], None), errno.EFAULT),
    (9, "LOAD_SLOT reserved", lambda c: _ld(c, reserved=1), errno.EINVAL),
    (10, "LOAD_SLOT flags", lambda c: _ld(c, flags=4), errno.EINVAL),
    (11, "LOAD_SLOT n = 0", lambda c: _ld(c, n=0, row_count=0), errno.EINVAL),
    (12, "LOAD_SLOT k = 0", lambda c: _ld(c, k=0, src_size=0), errno.EINVAL),
    (13, "LOAD_SLOT NaN scale", lambda c: _ld(c, scale=math.nan), errno.EINVAL),
    (14, "LOAD_SLOT negative scale", lambda c: _ld(c, scale=-1.0), errno.EINVAL),
    (15, "LOAD_SLOT slot > max_slot_id", lambda c: _ld(c, slot=0xFFFFFFFF), errno.EINVAL),
    (16, "LOAD_SLOT source in the input region", lambda c: _ld(c, src_offset=0), errno.EINVAL),
    (17, "LOAD_SLOT past the buffer end",
     lambda c: _ld(c, t=np.zeros((4, 1000), np.int8), src_offset=c.info["mmap_size"] - 64), errno.EINVAL),
    (18, "LOAD_SLOT misaligned source", lambda c: _ld(c, src_offset=c.info["weight_offset"] + 16), errno.EINVAL),
    (19, "LOAD_SLOT wrong src_size", lambda c: _ld(c, src_size=4 * row_bytes(100) - 16), errno.EINVAL),
    (20, "LOAD_SLOT rows past n", lambda c: _ld(c, row_begin=2, row_count=3), errno.EINVAL),
    (21, "LOAD_SLOT continuation without a start", lambda c: _ld(c, row_begin=2, row_count=2), errno.EINVAL),
    (22, "LOAD_SLOT code 3", _bad_code, errno.EINVAL),
    (23, "LOAD_SLOT padding not code 1", _bad_padding, errno.EINVAL),
    (24, "LOAD_SLOT beyond the free weight memory", lambda c: _ld(c, t=np.zeros((1000, 100), np.int8)), errno.ENOMEM),
    (25, "LOAD_WEIGHTS bad magic", lambda c: _legacy(c, magic=0x12345678), errno.EINVAL),
    (26, "LOAD_WEIGHTS wrong weight_size", lambda c: _legacy(c, size_delta=16), errno.EINVAL),
    (27, "MATMUL n_ops = 0", lambda c: _mm(c, n_ops=0), errno.EINVAL),
    (28, "MATMUL n_ops = 9", lambda c: _mm(c, n_ops=9), errno.EINVAL),
    (29, "MATMUL rows = 0", lambda c: _mm(c, rows=0), errno.EINVAL),
    (30, "MATMUL rows > max_rows", lambda c: _mm(c, rows=c.info["max_rows"] + 1), errno.EINVAL),
    (31, "MATMUL act_stride < k", lambda c: _mm(c, stride=99), errno.EINVAL),
    (32, "MATMUL on an empty slot", lambda c: _mm(c, ops=[(9, 0, c.info["output_offset"], 0, 0)]), errno.ENOENT),
    (33, "MATMUL k differs from the slot's", lambda c: _mm(c, k=64), errno.EINVAL),
    (34, "MATMUL activations past the input region",
     lambda c: _mm(c, act_offset=c.info["input_size"] - 128, scale_offset=0), errno.EINVAL),
    (35, "MATMUL scales overlap the activations", lambda c: _mm(c, scale_offset=64), errno.EINVAL),
    (36, "MATMUL y in the input region", lambda c: _mm(c, ops=[(0, 0, 1 << 20, 0, 0)]), errno.EINVAL),
    (37, "MATMUL outputs overlap",
     lambda c: _mm(c, ops=[(0, 0, c.info["output_offset"], 0, 0), (1, 0, c.info["output_offset"] + 256, 0, 0)]),
     errno.EINVAL),
    (38, "MATMUL unknown op flag", lambda c: _mm(c, ops=[(0, 2, c.info["output_offset"], 0, 0)]), errno.EINVAL),
    (39, "MATMUL op reserved", lambda c: _mm(c, ops=[(0, 0, c.info["output_offset"], 0, 1)]), errno.EINVAL),
    (40, "MATMUL command flags", lambda c: _mm(c, flags=1), errno.EINVAL),
    (41, "FREE_SLOTS first > end", lambda c: c.call(REQ["FREE_SLOTS"], F_FREE, 5, 1, 0, 0), errno.EINVAL),
    (42, "SLOT_INFO of an empty slot", lambda c: c.slot_info(9), errno.ENOENT),
    (43, "SLOT_INFO flags", lambda c: c.slot_info(0, flags=1), errno.EINVAL),
    (44, "GET_PERF_EXT unknown flag",
     lambda c: c.ioctl(REQ["GET_PERF_EXT"], bytearray(struct.pack(F_PERF_EXT, 2, 0, *([0] * 9), 0, 0, *([0] * 5)))),
     errno.EINVAL),
    (45, "INJECT_FAULT unknown kind", lambda c: c.call(REQ["INJECT_FAULT"], F_FAULT, 7, 1, 0, 0), errno.EINVAL),
    (46, "START_INFERENCE outside the input region", lambda c: _infer(c, input_offset=c.info["output_offset"]),
     errno.EINVAL),
    (47, "START_INFERENCE on a matrix engine", _infer, errno.EOPNOTSUPP),
    (48, "mmap at an offset", lambda c: _mmap(c, offset=4096), errno.EINVAL),
    (49, "mmap too long", lambda c: _mmap(c, length=c.info["mmap_size"] + 4096), errno.EINVAL),
    (50, "mmap private", lambda c: _mmap(c, shared=False), errno.EINVAL),
    (51, "second open", _second_open, errno.EBUSY),
    (52, "open of another path", lambda c: c.emu.open("/dev/bitnet7"), errno.ENOENT),
    (59, "INJECT_FAULT reserved", lambda c: c.call(REQ["INJECT_FAULT"], F_FAULT, C["FAULT_DMA"], 1, 0, 1), errno.EINVAL),
]


def test_the_list_is_the_documented_list():
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "DEVICE_ABI.md").read_text()
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| [^|]+ \| `(E[A-Z]+)` \|$", doc, re.M)}
    assert len(rows) >= 58
    for row, _, _, err in MALFORMED:
        assert getattr(errno, rows[row]) == err, f"row {row}"
    assert len(MALFORMED) >= 20


@pytest.mark.parametrize("row,what,send,err", MALFORMED, ids=[f"{r:02d}-{w}" for r, w, _, _ in MALFORMED])
def test_malformed_request_rejected_without_side_effects(row, what, send, err):
    card = make_card()
    before = card.snapshot()
    rc, got = send(card)
    assert (rc, got) == (-1, err), f"{what}: got {rc}, {errno.errorcode.get(got, got)}"
    assert card.snapshot() == before, f"{what}: the card changed"
    assert card.valid_matmul(), f"{what}: a valid request afterwards failed"


# ---------------------------------------------------------------------------------------------
# state-dependent rejections: rows 53-58
# ---------------------------------------------------------------------------------------------

def test_busy_card_rejects_and_times_out_then_abort_recovers():
    card = make_card(timeout_ms=200)
    assert card.call(REQ["INJECT_FAULT"], F_FAULT, C["FAULT_HANG"], 1, 0, 0) == (0, 0)
    assert _mm(card) == (0, 0)
    assert card.emu.poll(card.fd, 0) == (0, 0, 0)      # not done
    assert card.status()["state"] in (STATE["RUNNING"], STATE["DMA_TRANSFER"])
    perf = card.perf_ext()
    assert _mm(card) == (-1, errno.EBUSY)                                                  # 53
    assert _ld(card) == (-1, errno.EBUSY)                                                  # 54
    assert card.call(REQ["FREE_SLOTS"], F_FREE, 0, 2, 0, 0) == (-1, errno.EBUSY)           # 55
    assert card.ioctl(REQ["WAIT_COMPLETE"]) == (-1, errno.ETIMEDOUT)                      # 56
    assert card.emu.slots() == [0, 1] and card.perf_ext() == perf
    assert card.ioctl(REQ["ABORT"]) == (0, 0)
    st = card.status()
    assert st["state"] == STATE["IDLE"] and st["error_code"] == CARD_ERR["ABORTED"]
    assert card.ioctl(REQ["WAIT_COMPLETE"]) == (-1, errno.ECANCELED)
    assert card.perf_ext()["commands"] == perf["commands"]   # the aborted command never ran
    assert card.valid_matmul()


def test_card_in_error_rejects_until_reset():
    card = make_card()
    assert card.call(REQ["INJECT_FAULT"], F_FAULT, C["FAULT_ENGINE"], 1, 0, 0) == (0, 0)
    assert _mm(card) == (0, 0)
    assert card.emu.poll(card.fd, 5000) == (1, POLLIN | POLLERR, 0)
    st = card.status()
    assert st["state"] == STATE["ERROR"] and st["error_code"] == CARD_ERR["ENGINE"]
    assert card.ioctl(REQ["WAIT_COMPLETE"]) == (-1, errno.EIO)
    assert _mm(card) == (-1, errno.EIO)                                                    # 57
    assert _ld(card) == (-1, errno.EIO)                                                    # 58
    assert card.call(REQ["FREE_SLOTS"], F_FREE, 0, 2, 0, 0) == (-1, errno.EIO)
    assert card.slot_info(0)["n"] == 40                     # queries still answer
    assert card.ioctl(REQ["RESET"]) == (0, 0)
    st = card.status()
    assert st["state"] == STATE["IDLE"] and st["error_code"] == 0 and st["tokens_processed"] == 0
    assert card.emu.slots() == [0, 1]                       # RESET keeps the weight memory
    assert card.valid_matmul()


@pytest.mark.parametrize("kind,code", [("FAULT_DMA", "DMA"), ("FAULT_FIFO_OVERFLOW", "FIFO_OVERFLOW"),
                                       ("FAULT_HW", "HW"), ("FAULT_ENGINE", "ENGINE")])
def test_fault_after_n_commands_latches_the_card_code(kind, code):
    card = make_card()
    assert card.call(REQ["INJECT_FAULT"], F_FAULT, C[kind], 1, 2, 0) == (0, 0)
    commands = card.perf_ext()["commands"]
    assert card.valid_matmul() and card.valid_matmul()      # `after` = 2 commands still complete
    assert _mm(card) == (0, 0)
    assert card.emu.poll(card.fd, 5000) == (1, POLLIN | POLLERR, 0)
    st = card.status()
    assert st["state"] == STATE["ERROR"] and st["error_code"] == CARD_ERR[code]
    assert card.perf_ext()["commands"] == commands + 2    # the failed command is not counted
    assert card.ioctl(REQ["RESET"]) == (0, 0)
    assert card.valid_matmul()                             # count 1: the fault is spent


def test_abi_2_0_inject_fault_request_still_works():
    card = make_card()
    assert C["IOC_INJECT_FAULT_V20"] == 0x4008420E
    assert card.call(C["IOC_INJECT_FAULT_V20"], "<2I", C["FAULT_ENGINE"], 1) == (0, 0)
    assert _mm(card) == (0, 0)
    assert card.emu.poll(card.fd, 5000) == (1, POLLIN | POLLERR, 0)
    assert card.status()["error_code"] == CARD_ERR["ENGINE"]
    assert card.ioctl(REQ["RESET"]) == (0, 0)
    assert card.call(C["IOC_INJECT_FAULT_V20"], "<2I", 9, 1) == (-1, errno.EINVAL)


def test_close_aborts_and_frees_the_node():
    card = make_card()
    assert card.call(REQ["INJECT_FAULT"], F_FAULT, C["FAULT_HANG"], 1, 0, 0) == (0, 0)
    assert _mm(card) == (0, 0)
    assert card.emu.close(card.fd) == (0, 0)
    assert card.emu.close(card.fd) == (-1, errno.EBADF)
    fd, err = card.emu.open(card.emu.node)
    assert fd >= 0 and err == 0
    card.fd = fd
    assert card.status()["error_code"] == CARD_ERR["ABORTED"]
    assert card.valid_matmul()
