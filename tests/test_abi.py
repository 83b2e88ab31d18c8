"""cpp/bitnet_abi.h against docs/DEVICE_ABI.md: every struct's size and every field's offset and
size, every ioctl's number, direction, argument size and request value, and the constants the
document names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bitnet import _core

DOC = (Path(__file__).resolve().parents[1] / "docs" / "DEVICE_ABI.md").read_text()
L = _core.abi_layout()
DIRS = {"_IO": 0, "_IOW": 1, "_IOR": 2, "_IOWR": 3}


def doc_structs():
    """{name: (size, {field: (offset, size)})} from the '### `struct x` (N bytes)' tables."""
    out = {}
    for m in re.finditer(r"^### `struct (\w+)` \((\d+) bytes\)\n(.*?)(?=^#|\Z)", DOC, re.M | re.S):
        fields = {}
        for row in re.finditer(r"^\| (\d+) \| (\d+) \| ([\w\[\]]+) \| (\w+) \|", m.group(3), re.M):
            fields[row.group(4)] = (int(row.group(1)), int(row.group(2)))
        out[m.group(1)] = (int(m.group(2)), fields)
    return out


def doc_ioctls():
    rows = re.findall(r"^\| (\d+) \| `BITNET_IOC_(\w+)` \| `(_IO\w*)` \| (?:`struct (\w+)`|none) \| `0x([0-9a-f]+)` \|$",
                      DOC, re.M)
    return {name: (int(nr), DIRS[d], st, int(req, 16)) for nr, name, d, st, req in rows}


def test_every_struct_is_documented_and_matches():
    doc = doc_structs()
    assert set(doc) == set(L["structs"]), "structs in the header and in the document differ"
    for name, (size, fields) in doc.items():
        hdr = L["structs"][name]
        assert hdr["size"] == size, f"{name}: header {hdr['size']} bytes, document {size}"
        assert size % 8 == 0 or name == "bitnet_fault", name
        got = {f: tuple(v) for f, v in hdr["fields"].items()}
        assert got == fields, f"{name}: header fields {got} != document {fields}"
        # explicit padding: the fields tile the struct with no holes
        end = 0
        for off, sz in sorted(fields.values()):
            assert off == end, f"{name}: hole before offset {off}"
            end = off + sz
        assert end == size, f"{name}: hole at the end"


def test_every_ioctl_is_documented_and_matches():
    doc = doc_ioctls()
    assert set(doc) == set(L["ioctls"])
    for name, (nr, d, st, req) in doc.items():
        hdr = L["ioctls"][name]
        assert hdr["type"] == ord("B"), name
        assert (hdr["nr"], hdr["dir"]) == (nr, d), name
        assert hdr["size"] == (L["structs"][st]["size"] if st else 0), name
        assert hdr["request"] == req, f"{name}: header {hdr['request']:#x}, document {req:#x}"
    # VIBEE's numbers are kept
    assert [doc[n][0] for n in ("START_INFERENCE", "LOAD_WEIGHTS", "GET_STATUS", "WAIT_COMPLETE", "ABORT",
                                "GET_PERF", "RESET")] == [1, 2, 3, 4, 5, 6, 7]


def test_constants_states_and_card_errors_match_the_document():
    c = L["constants"]
    assert c["MAGIC"] == ord("B")
    assert f"ABI version **{c['ABI_MAJOR']}.{c['ABI_MINOR']}**" in DOC
    assert (c["INPUT_DEFAULT_SIZE"], c["OUTPUT_DEFAULT_SIZE"], c["WEIGHT_DEFAULT_SIZE"]) == (64 << 20, 64 << 20, 128 << 20)
    assert c["MMAP_DEFAULT_SIZE"] == 256 << 20
    assert f"`BITNET_SLOT_MAGIC` = {c['SLOT_MAGIC']:#X}".replace("0X", "0x") in DOC
    for name, value in L["states"].items():
        assert re.search(rf"^\| {name} \| {value} \|", DOC, re.M), name
    for name, value in L["card_errors"].items():
        assert re.search(rf"^\| {value} \| {name} \|", DOC, re.M), name
    from bitnet.errors import CARD_ERRORS
    assert CARD_ERRORS == {v: k for k, v in L["card_errors"].items()}   # the Python copy of the table
    for cap, bit in (("CAP_MATMUL", 0), ("CAP_ACC_OUT", 1), ("CAP_LEGACY_INFERENCE", 2), ("CAP_FAULT_INJECT", 3),
                     ("CAP_EMULATED", 4)):
        assert c[cap] == 1 << bit and f"`BITNET_{cap}` (bit {bit}" in DOC, cap


@pytest.mark.parametrize("name", ["vibee-zcu104", "vibee-vcu118", "kv260"])
def test_board_profiles_table(name):
    with __import__("bitnet").BitNet("sim", profile=name, n_threads=1) as bn:
        p = bn.card_info()
    row = re.search(rf"^\| `{name}`[^|]*\| (\S+) \| (\d+) × (\d+) \| (\S+) \| (\S+) \| (\d+) \| (\d+) \| ([\d.]+) GiB \|$",
                    DOC, re.M)
    assert row, name
    clock, lanes, width, ddr, dma, setup, pipe, cap = row.groups()
    assert (float(clock), int(lanes), int(width)) == (p["clock_mhz"], p["lanes"], p["lane_width"])
    assert (float(ddr), float(dma)) == (p["ddr_gbps"], p["dma_gbps"])
    assert (int(setup), int(pipe)) == (p["dma_setup_cycles"], p["pipeline_cycles"])
    assert float(cap) * 2**30 == p["weight_capacity"]
