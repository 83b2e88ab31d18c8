"""The card's counters against the cycle-model formulas of docs/DEVICE_ABI.md section 9,
computed here in Python from the model's shapes and the board profile; custom profile
parameters; the host/card figures of ``performance``; ``bitnet info``'s predicted tokens/s."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from bitnet import BitNet, BitNetError, ErrorCode
from bitnet.models import make_random_model

KEYS = ("total_cycles", "dma_cycles", "compute_cycles", "commands", "matmuls", "macs", "dma_bytes",
        "weight_bytes_read")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("cyc") / "tiny.gguf", preset="tiny", seed=5))


# ------------------------------------------------------------------- the formulas, in Python

def row_bytes(k):
    return -(-k // 64) * 16


def dma_cycles(p, nbytes):
    return p["dma_setup_cycles"] + math.ceil(nbytes / (p["dma_gbps"] * 1e3 / p["clock_mhz"]))


def compute_cycles(p, B, N, K):
    mac = -(-N // p["lanes"]) * -(-K // p["lane_width"]) * B
    stream = math.ceil(N * row_bytes(K) / (p["ddr_gbps"] * 1e3 / p["clock_mhz"]))
    return max(mac, stream) + p["pipeline_cycles"]


def command(p, B, K, Ns):
    c = dict.fromkeys(KEYS, 0)
    c["dma_cycles"] = dma_cycles(p, B * K + 4 * B) + sum(dma_cycles(p, 4 * B * n) for n in Ns)
    c["compute_cycles"] = sum(compute_cycles(p, B, n, K) for n in Ns)
    c["total_cycles"] = c["dma_cycles"] + c["compute_cycles"]
    c["commands"], c["matmuls"] = 1, len(Ns)
    c["macs"] = sum(B * n * K for n in Ns)
    c["dma_bytes"] = B * K + 4 * B + sum(4 * B * n for n in Ns)
    c["weight_bytes_read"] = sum(n * row_bytes(K) for n in Ns)
    return c


def add(a, b):
    return {k: a[k] + b[k] for k in KEYS}


def forward(p, cfg, R):
    """The four commands per layer of one forward pass of R rows."""
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    QD = cfg["num_heads"] * cfg["head_dim"]
    KVD = cfg["num_kv_heads"] * cfg["head_dim"]
    total = dict.fromkeys(KEYS, 0)
    for _ in range(cfg["num_layers"]):
        for K, Ns in ((D, [QD, KVD, KVD]), (QD, [D]), (D, [F, F]), (F, [D])):
            total = add(total, command(p, R, K, Ns))
    return total


def load(p, cfg):
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    QD = cfg["num_heads"] * cfg["head_dim"]
    KVD = cfg["num_kv_heads"] * cfg["head_dim"]
    shapes = [(QD, D), (KVD, D), (KVD, D), (D, QD), (F, D), (F, D), (D, F)] * cfg["num_layers"]
    c = dict.fromkeys(KEYS, 0)
    for n, k in shapes:
        c["dma_cycles"] += dma_cycles(p, n * row_bytes(k))
        c["dma_bytes"] += n * row_bytes(k)
    c["total_cycles"] = c["dma_cycles"]
    return c


def counters(bn):
    d = bn.performance_details()
    return {k: d[k] for k in KEYS}


def delta(a, b):
    return {k: b[k] - a[k] for k in KEYS}


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("device", ["sim", "sim+ioctl"])
@pytest.mark.parametrize("profile", ["vibee-zcu104", "vibee-vcu118", "kv260"])
def test_counters_equal_the_formulas(model, device, profile):
    with BitNet(device, profile=profile, n_threads=1) as bn:
        p = bn.card_info()
        bn.load_weights(model)
        cfg = bn.model_config()
        assert counters(bn) == load(p, cfg)
        c0 = counters(bn)
        bn.inference([1, 2, 3, 4, 5], max_output=4, stop_token_ids=[])
        # one prefill pass of 5 rows, then one pass of 1 row per further token
        expect = add(forward(p, cfg, 5), add(forward(p, cfg, 1), add(forward(p, cfg, 1), forward(p, cfg, 1))))
        assert delta(c0, counters(bn)) == expect
        d = bn.performance_details()
        assert d["last_job_card_cycles"] == expect["total_cycles"]
        card_s = expect["total_cycles"] / (p["clock_mhz"] * 1e6)
        assert d["last_job_card_seconds"] == pytest.approx(card_s, rel=1e-12)
        assert d["card_tokens_per_second"] == pytest.approx(4 / card_s, rel=1e-12)
        perf = bn.performance
        assert perf.card_tokens_per_second == d["card_tokens_per_second"]
        assert perf.tokens_per_second == d["host_tokens_per_second"] > 0
        assert perf.host_seconds == d["last_job_host_seconds"] > 0
        assert perf.counters_source == "cycle model" and perf.clock_mhz == p["clock_mhz"]

        # a batch of two sequences: one prefill pass over both prompts, then passes of B = 2
        c0 = counters(bn)
        job = bn._dev.submit([np.array([1, 2, 3], np.int32), np.array([4, 5, 6, 7], np.int32)], 3, 0.0, 0, 1.0, 0, [])
        job.wait(-1)
        expect = add(forward(p, cfg, 7), add(forward(p, cfg, 2), forward(p, cfg, 2)))
        assert delta(c0, counters(bn)) == expect


def test_user_matmul_counters_and_custom_profile():
    params = dict(profile="kv260", clock_mhz=123.5, lanes=7, lane_width=19, ddr_gbps=3.3, dma_gbps=0.7)
    with BitNet("sim+ioctl", n_threads=1, **params) as bn:
        p = bn.card_info()
        assert p["profile"] == "kv260+custom"
        assert (p["clock_mhz"], p["lanes"], p["lane_width"], p["ddr_gbps"], p["dma_gbps"]) == (123.5, 7, 19, 3.3, 0.7)
        w = np.random.default_rng(0).integers(-1, 2, size=(45, 300)).astype(np.int8)
        c0 = counters(bn)
        slot = bn.load_weights_from_array(w)
        c1 = counters(bn)
        assert c1["dma_cycles"] - c0["dma_cycles"] == dma_cycles(p, 45 * row_bytes(300))
        bn.matmul(np.ones((6, 300), np.float32), slot)
        assert delta(c1, counters(bn)) == command(p, 6, 300, [45])


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(clock_mhz=0), ValueError, "clock_mhz"), (dict(clock_mhz=float("nan")), ValueError, "clock_mhz"),
    (dict(clock_mhz=1e9), ValueError, "clock_mhz"), (dict(clock_mhz="200"), TypeError, "clock_mhz"),
    (dict(lanes=0), ValueError, "lanes"), (dict(lanes=2.5), TypeError, "lanes"), (dict(lanes=True), TypeError, "lanes"),
    (dict(lane_width=5000), ValueError, "lane_width"), (dict(ddr_gbps=-1.0), ValueError, "ddr_gbps"),
    (dict(ddr_gbps=float("inf")), ValueError, "ddr_gbps"), (dict(dma_gbps=0.0), ValueError, "dma_gbps"),
    (dict(profile="zcu999"), ValueError, "profile"), (dict(profile=3), TypeError, "profile"),
])
def test_bad_profile_parameters(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        BitNet("sim", **kwargs)


def test_profile_parameters_are_for_the_simulator(caplog):
    with pytest.raises(ValueError, match="simulator"):
        BitNet("/dev/bitnet0", clock_mhz=100)
    # a profile name is ignored for a card (it reports its own), with a warning
    with pytest.raises(BitNetError) as e:
        BitNet("/dev/bitnet-missing9", profile="kv260")
    assert e.value.code == ErrorCode.OPEN
    assert "ignored" in caplog.text and "/dev/bitnet-missing9" in caplog.text
    # the C++ side validates too (for callers of _core directly)
    from bitnet import _core

    with pytest.raises(BitNetError) as e:
        _core.Device("sim", "vibee-zcu104", 1, clock_mhz=-3.0)
    assert e.value.code == ErrorCode.INVALID and "clock_mhz" in str(e.value)


def test_cli_info_prints_the_predicted_card_tokens_per_second(model, capsys):
    from bitnet.cli import main

    assert main(["info", "--profile", "vibee-zcu104", model]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^predicted card tokens/s: ([\d.]+) \(decode, batch 1", out, re.M)
    assert m, out
    with BitNet("sim", profile="vibee-zcu104", n_threads=1) as bn:
        p = bn.card_info()
        bn.load_weights(model)
        cfg = bn.model_config()
    expect = p["clock_mhz"] * 1e6 / forward(p, cfg, 1)["total_cycles"]
    assert float(m.group(1)) == pytest.approx(expect, abs=0.006)
    assert "vibee-zcu104 @ 200 MHz, 16 x 27 MAC lanes" in out

    assert main(["info", "--profile", "kv260", "--clock-mhz", "400", "--lanes", "4", model]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^predicted card tokens/s: ([\d.]+)", out, re.M)
    with BitNet("sim", profile="kv260", clock_mhz=400, lanes=4, n_threads=1) as bn:
        p = bn.card_info()
    assert float(m.group(1)) == pytest.approx(p["clock_mhz"] * 1e6 / forward(p, cfg, 1)["total_cycles"], abs=0.006)
