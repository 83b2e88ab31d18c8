"""The kernel transport (cpp/kernel_transport.cpp) over the emulated driver: "sim+ioctl" must
give exactly what "sim" gives, also when the card's small DMA regions force it to split
commands and weight loads; the open, timeout and fault paths."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import BitNet, BitNetError, ErrorCode, _core
from bitnet.models import make_random_model


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("ioctl") / "small.gguf", preset="small", seed=9))


def run(dev, model, prompt):
    dev.load_model(model)
    logits = dev.logits(np.asarray(prompt, np.int32))
    greedy = dev.submit([np.asarray(prompt, np.int32)], 12, 0.0, 0, 1.0, 0, [])
    greedy.wait(-1)
    sampled = dev.submit([np.asarray(prompt, np.int32)], 12, 0.8, 40, 0.95, 3, [])
    sampled.wait(-1)
    batch = dev.submit([np.asarray(p, np.int32) for p in ([1, 2], prompt, [7] * 9)], 6, 0.0, 0, 1.0, 0, [])
    batch.wait(-1)
    for job in (greedy, sampled, batch):
        job.rethrow_if_failed()
    return logits, greedy.tokens(), sampled.tokens(), [batch.tokens(i) for i in range(3)], dev.perf()


def test_sim_ioctl_is_bit_identical_to_sim(small_model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    a = run(_core.Device("sim", "vibee-zcu104", 2), small_model, prompt)
    b = run(_core.Device("sim+ioctl", "vibee-zcu104", 2), small_model, prompt)
    assert np.array_equal(a[0], b[0])                      # logits, bit for bit
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert all(np.array_equal(x, y) for x, y in zip(a[3], b[3]))
    for k in ("total_cycles", "dma_cycles", "compute_cycles", "commands", "matmuls", "macs", "dma_bytes",
              "weight_bytes_read"):
        assert a[4][k] == b[4][k], k


def test_small_regions_split_commands_and_loads_with_identical_results(small_model):
    prompt = list(range(1, 12))
    a = run(_core.Device("sim", "vibee-zcu104", 2), small_model, prompt)
    emu = dict(input_size=16384, output_size=16384, weight_size=16384, max_rows=3, max_ops=1)
    dev = _core.Device("sim+ioctl", "vibee-zcu104", 2, emu=emu)
    b = run(dev, small_model, prompt)
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert all(np.array_equal(x, y) for x, y in zip(a[3], b[3]))
    assert b[4]["commands"] > a[4]["commands"]   # the same work in more, smaller commands
    assert b[4]["macs"] == a[4]["macs"]
    # user matmuls with accumulators through the split path
    w = np.random.default_rng(1).integers(-1, 2, size=(1500, 40)).astype(np.int8)
    x = np.random.default_rng(2).standard_normal((7, 40)).astype(np.float32)
    s = _core.Device("sim", "vibee-zcu104", 1)
    for d in (s, dev):
        d.load_user_weights(0, w, 0.5)
    ya, acca = s.matmul(0, x, True)
    yb, accb = dev.matmul(0, x, True)
    assert np.array_equal(ya, yb) and np.array_equal(acca, accb)
    # a product whose one output row does not fit the output region cannot be split: a clear error
    dev.load_user_weights(1, np.ones((5000, 40), np.int8), 1.0)
    with pytest.raises(ValueError, match="does not fit the card's DMA regions"):
        dev.matmul(1, x, False)
    assert dev.status()["state"] == "IDLE"


def test_card_info_names_the_transport():
    with BitNet("sim+ioctl") as bn:
        info = bn.card_info()
        assert info["transport"] == "sim+ioctl" and "driver emulation" in info["kernel"]
        assert info["counters"] == "cycle model" and info["profile"] == "vibee-zcu104"
        assert info["weight_capacity"] == 2 << 30 and info["clock_mhz"] == 200.0


def test_hung_card_times_out_then_reset_recovers(small_model):
    with BitNet("sim+ioctl") as bn:
        slot = bn.load_weights_from_array(np.ones((4, 8), np.int8))
        bn._dev._set_card_timeout_ms(150)
        bn._dev._inject_hang()
        with pytest.raises(TimeoutError) as e:
            bn.matmul(np.ones(8, np.float32), slot)
        assert e.value.code == ErrorCode.TIMEOUT and "aborted" in str(e.value)
        assert bn.status.state == "ERROR" and bn.status.error_code == ErrorCode.TIMEOUT
        bn.reset()
        assert np.allclose(bn.matmul(np.ones(8, np.float32), slot), 8.0)
        # the same inside a generation job: the job ends with the error, the device latches it
        bn.load_weights(small_model)
        bn._dev._inject_hang()
        with pytest.raises(TimeoutError):
            bn.inference([1, 2, 3], max_output=4)
        assert bn.status.state == "ERROR"
        bn.reset()
        assert bn.inference([1, 2, 3], max_output=4, stop_token_ids=[]).shape == (4,)


def test_the_direct_simulator_has_no_hang_hook():
    with BitNet("sim") as bn:
        with pytest.raises(ValueError, match="hung card"):
            bn._dev._inject_hang()


@pytest.mark.parametrize("spec", ["simulator", "sim+", "ioctl", "", "dev/bitnet0"])
def test_unknown_device_strings(spec):
    with pytest.raises(ValueError, match="sim\\+ioctl"):
        BitNet(spec)


def test_missing_node_is_open_error_naming_the_path():
    with pytest.raises(FileNotFoundError) as e:
        BitNet("/dev/bitnet-does-not-exist7")
    assert isinstance(e.value, BitNetError) and e.value.code == ErrorCode.OPEN
    assert "/dev/bitnet-does-not-exist7" in str(e.value) and 'device="sim"' in str(e.value)


def test_a_node_that_is_not_a_card_is_rejected_at_open():
    with pytest.raises(BitNetError) as e:
        BitNet("/dev/null")
    assert e.value.code == ErrorCode.OPEN
    assert "GET_INFO" in str(e.value) and 'device="sim"' in str(e.value)
