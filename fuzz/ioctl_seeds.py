"""Seed scripts for fuzz/fuzz_ioctl.cpp (format: sim/ioctl_script.h).

Each seed is a well-formed session on the small emulated card the script runs on (DMA buffer:
input region at 0, output at 16 KiB, weight staging at 32 KiB): load a slot, run a MATMUL,
wait, inject a fault, recover. The fuzzer mutates from there into the deep paths.

``python3 fuzz/ioctl_seeds.py DIR`` writes them as DIR/seed-*.ioctl; tests import ``seeds()``.
"""
from __future__ import annotations

import os
import random
import struct
import sys

IN, OUT, W = 0, 16 << 10, 32 << 10
# indices into the script's request table (sim/ioctl_script.cpp kRequests)
(START_INFERENCE, LOAD_WEIGHTS, GET_STATUS, WAIT_COMPLETE, ABORT, GET_PERF, RESET, GET_INFO, LOAD_SLOT,
 FREE_SLOTS, SLOT_INFO, MATMUL, GET_PERF_EXT, INJECT_FAULT, INJECT_FAULT_V20) = range(15)
FIXUP = 4
# argument bytes the script reads for each request (its size field)
SIZE = [32, 16, 16, 0, 0, 32, 0, 248, 48, 16, 32, 296, 128, 16, 8]


def ioctl(which: int, arg: bytes = b"", mode: int = 0) -> bytes:
    assert len(arg) <= SIZE[which]
    return bytes([0, which, mode]) + arg + bytes(SIZE[which] - len(arg))


def write(off: int, data: bytes, weights: bool = False) -> bytes:
    return bytes([2 if weights else 1]) + struct.pack("<IH", off, len(data)) + data


def scales(off: int, values: list) -> bytes:
    return bytes([7]) + struct.pack("<IB", off, len(values)) + bytes(values)


def poll(ms: int = 3) -> bytes:
    return bytes([3, ms])


def load_slot(slot: int, n: int, k: int, rows: bytes) -> bytes:
    # with FIXUP: n -> n % 64 + 1, k -> k % 512 + 1, row_count -> row_count % n + 1
    arg = struct.pack("<IIIIfIIIQQ", slot, 0, n - 1, k - 1, 0.5, 0, n - 1, 0, W - W, 0)
    return write(W, rows, weights=True) + ioctl(LOAD_SLOT, arg, FIXUP)


def matmul(rows: int, k: int, slots: list, acc: bool = True) -> bytes:
    head = struct.pack("<QQIIIIII", IN, 4096, rows - 1, k - 1, 0, len(slots) - 1, 0, 0)
    ops = b""
    for i, s in enumerate(slots):
        ops += struct.pack("<IIQQQ", s, 1 if acc else 0, 2048 * i, 2048 * i + 1024, 0)
    ops += bytes(32 * (8 - len(slots)))
    return ioctl(MATMUL, head + ops, FIXUP)


def fault(kind: int, count: int = 1, after: int = 0) -> bytes:
    return ioctl(INJECT_FAULT, struct.pack("<4I", kind, count, after, 0), FIXUP)


def seeds() -> dict:
    rng = random.Random(7)

    def trits(nbytes: int) -> bytes:   # packed rows whose every code is a trit (0, 1 or 2)
        return bytes(sum(rng.randrange(3) << (2 * j) for j in range(4)) for _ in range(nbytes))

    acts = bytes(rng.randrange(256) for _ in range(2 * 128))
    session = (load_slot(0, 4, 128, trits(4 * 32)) + load_slot(1, 2, 128, trits(2 * 32))
               + write(IN, acts) + scales(4096, [3, 9]) + matmul(2, 128, [0, 1]) + poll()
               + ioctl(WAIT_COMPLETE) + ioctl(GET_STATUS) + ioctl(GET_PERF_EXT, bytes(128), FIXUP))
    out = {
        "session": session,
        "fault": session + fault(3, 1, 1) + matmul(2, 128, [0]) + poll() + matmul(2, 128, [1]) + poll()
        + ioctl(WAIT_COMPLETE) + ioctl(RESET) + matmul(2, 128, [0, 1]) + poll(),
        "hang": session + fault(2, 1, 0) + matmul(2, 128, [0]) + ioctl(WAIT_COMPLETE) + ioctl(ABORT)
        + matmul(2, 128, [1]) + bytes([4]) + ioctl(SLOT_INFO, struct.pack("<8I", 1, 0, 0, 0, 0, 0, 0, 0)),
        "legacy": write(W, struct.pack("<IIIf", 0x4C534E42, 2, 64, 1.0) + trits(2 * 16), weights=False)
        + ioctl(LOAD_WEIGHTS, struct.pack("<QII", W, 3, 16 + 2 * 16)) + ioctl(FREE_SLOTS, struct.pack("<4I", 0, 8, 0, 0))
        + ioctl(START_INFERENCE, bytes(32), FIXUP) + ioctl(INJECT_FAULT_V20, struct.pack("<2I", 1, 1)),
        "raw": bytes([0, 15, 0]) + struct.pack("<I", 0xC0404263) + bytes(range(64)) + bytes([5]) + struct.pack("<IHB", 4096, 0, 1)
        + bytes([6, 16]) + b"/dev/bitnet-emu0",
    }
    return out


if __name__ == "__main__":
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    for name, blob in seeds().items():
        with open(os.path.join(d, f"seed-{name}.ioctl"), "wb") as f:
            f.write(blob)
