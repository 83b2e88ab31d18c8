"""Tests that need a real BitNet card at /dev/bitnetN (docs/DEVICE_ABI.md section 11).

Run them with ``pytest -m hardware``; they skip when no /dev/bitnet* node exists. The card
must give exactly the simulator's numbers: the ABI fixes the arithmetic bit for bit.
"""
from __future__ import annotations

import glob

import numpy as np
import pytest

from bitnet import BitNet
from bitnet.models import make_random_model

NODES = sorted(glob.glob("/dev/bitnet[0-9]*"))
pytestmark = [pytest.mark.hardware, pytest.mark.skipif(not NODES, reason="no /dev/bitnet* card on this machine")]


@pytest.fixture(scope="module")
def node():
    return NODES[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("hw") / "tiny.gguf", preset="tiny", seed=3))


def test_card_opens_and_describes_itself(node):
    with BitNet(node) as bn:
        info = bn.card_info()
        assert info["transport"] == node
        assert info["counters"] == "hardware"
        assert info["clock_mhz"] > 0 and info["lanes"] > 0 and info["weight_capacity"] > 0
        assert bn.status.state == "IDLE"


@pytest.mark.parametrize("shape", [(1, 1), (37, 100), (64, 257), (300, 2560)])
def test_card_matmul_is_bit_exact(node, shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.integers(-1, 2, size=shape).astype(np.int8)
    x = rng.standard_normal((5, shape[1])).astype(np.float32)
    results = []
    for device in ("sim", node):
        with BitNet(device) as bn:
            slot = bn.load_weights_from_array(w, scale=0.37)
            results.append(bn.matmul(x, slot, return_acc=True))
    assert np.array_equal(results[0][1], results[1][1])   # int32 accumulators
    assert np.array_equal(results[0][0], results[1][0])   # fp32 outputs


def test_card_generates_the_simulators_tokens(node, tiny_model):
    prompt = [1, 5, 9, 200, 17]
    out = {}
    for device in ("sim", node):
        with BitNet(device) as bn:
            bn.load_weights(tiny_model)
            out[device] = (bn.logits(prompt), bn.inference(prompt, max_output=16, stop_token_ids=[]))
            perf = bn.performance
            assert perf.total_cycles > 0 and perf.card_seconds > 0
    assert np.array_equal(out["sim"][0], out[node][0])
    assert np.array_equal(out["sim"][1], out[node][1])
