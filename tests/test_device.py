"""The BitNet device API on the simulator: lifecycle, inference, async jobs, sampling,
registers, user weight slots and argument checking.

Every test that touches the card runs on both simulator devices: "sim" (direct) and
"sim+ioctl" (the kernel transport over the emulated driver, docs/DEVICE_ABI.md)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import bitnet
from bitnet import BitNet, BitNetError, ErrorCode
from bitnet.models import make_random_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("m") / "tiny.gguf", preset="tiny", seed=3))


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    # A context long enough that a job outlasts the test's sleeps on any machine.
    return str(make_random_model(tmp_path_factory.mktemp("m") / "long.gguf", preset="small", seed=4,
                                 max_position_embeddings=16384))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("m") / "small.gguf", preset="small", seed=4))


DEVICES = ["sim", "sim+ioctl"]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture()
def dev(tiny_model, device):
    with BitNet(device) as bn:
        bn.load_weights(tiny_model)
        yield bn


# ----------------------------------------------------------------------------- lifecycle

def test_close_is_idempotent_and_later_calls_raise(tiny_model, device):
    bn = BitNet(device)
    bn.load_weights(tiny_model)
    bn.close()
    bn.close()
    for call in (lambda: bn.inference([1, 2]), lambda: bn.status, lambda: bn.load_weights(tiny_model),
                 lambda: bn.performance, lambda: bn.wait(0), lambda: bn.logits([1])):
        with pytest.raises(BitNetError) as e:
            call()
        assert e.value.code == ErrorCode.CLOSED
        assert "closed" in str(e.value)


def test_missing_card_node_raises_open():
    with pytest.raises(BitNetError) as e:
        BitNet("/dev/bitnet0")
    assert e.value.code == ErrorCode.OPEN
    assert "/dev/bitnet0" in str(e.value) and 'device="sim"' in str(e.value)


def test_default_device_is_sim_without_card(monkeypatch):
    monkeypatch.delenv("BITNET_DEVICE", raising=False)
    assert bitnet.default_device() == "sim"
    monkeypatch.setenv("BITNET_DEVICE", "sim")
    with BitNet() as bn:
        assert bn.device == "sim"


def test_inference_before_load_raises_state(device):
    with BitNet(device) as bn:
        with pytest.raises(BitNetError) as e:
            bn.inference([1, 2, 3])
        assert e.value.code == ErrorCode.STATE
        assert "load_weights" in str(e.value)


def test_bad_model_file_leaves_device_usable(tmp_path, tiny_model, device):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with BitNet(device) as bn:
        with pytest.raises(BitNetError) as e:
            bn.load_weights(bad)
        assert e.value.code == ErrorCode.FILE
        assert str(bad) in str(e.value)
        with pytest.raises(FileNotFoundError):
            bn.load_weights(tmp_path / "missing.gguf")
        bn.load_weights(tiny_model)
        assert bn.inference([1, 2, 3], max_output=3).shape == (3,)
        assert bn.status.state == "IDLE"


# ----------------------------------------------------------------------------- inference

def test_inference_accepts_list_tuple_array_and_returns_int32(dev):
    a = dev.inference([5, 6, 7], max_output=8, stop_token_ids=[])
    b = dev.inference((5, 6, 7), max_output=8, stop_token_ids=[])
    c = dev.inference(np.array([5, 6, 7], dtype=np.int64), max_output=8, stop_token_ids=[])
    assert a.dtype == np.int32 and a.shape == (8,)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert ((a >= 0) & (a < dev.model_info.vocab_size)).all()


def test_greedy_first_token_is_argmax_of_logits(dev):
    prompt = [3, 14, 15, 92, 65]
    logits = dev.logits(prompt)
    assert logits.shape == (5, dev.model_info.vocab_size) and logits.dtype == np.float32
    out = dev.inference(prompt, max_output=4, stop_token_ids=[])
    assert out[0] == int(np.argmax(logits[-1]))
    # Continuing: the second token is the argmax after appending the first.
    logits2 = dev.logits(prompt + [int(out[0])])
    assert out[1] == int(np.argmax(logits2[-1]))
    # Prefix consistency: logits of a prefix equal the first rows of the longer pass.
    assert np.allclose(logits2[:5], logits, atol=1e-5)


def test_stop_token_ends_and_is_included(dev):
    free = dev.inference([1, 2, 3], max_output=12, stop_token_ids=[])
    stop = int(free[4])
    out = dev.inference([1, 2, 3], max_output=12, stop_token_ids=[stop])
    first = list(free).index(stop)
    assert list(out) == list(free[: first + 1])


def test_max_output_zero_and_max_seq_len(dev):
    assert dev.inference([1, 2], max_output=0).shape == (0,)
    n_ctx = dev.model_info.max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        dev.inference([5] * (n_ctx + 1), max_output=1)
    out = dev.inference([7] * (n_ctx - 3), max_output=50, stop_token_ids=[])
    assert len(out) == 3


def test_sampling_seeded(dev):
    p = [9, 8, 7]
    a = dev.inference(p, max_output=16, temperature=1.5, seed=11, stop_token_ids=[])
    b = dev.inference(p, max_output=16, temperature=1.5, seed=11, stop_token_ids=[])
    c = dev.inference(p, max_output=16, temperature=1.5, seed=12, stop_token_ids=[])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = dev.inference(p, max_output=16, stop_token_ids=[])
    assert np.array_equal(dev.inference(p, max_output=16, temperature=0.0, seed=5, stop_token_ids=[]), greedy)
    # top_k=1 is greedy whatever the temperature; a tiny top_p keeps only the best token.
    assert np.array_equal(dev.inference(p, max_output=16, temperature=2.0, top_k=1, seed=1, stop_token_ids=[]), greedy)
    assert np.array_equal(dev.inference(p, max_output=16, temperature=0.7, top_p=1e-6, seed=1, stop_token_ids=[]), greedy)


@pytest.mark.parametrize("bad,exc", [
    ([], ValueError), ([[1, 2]], TypeError), (np.array([[1, 2]]), ValueError), (np.array(3), ValueError),
    ([1.5], TypeError), (np.array([1.0, 2.0]), TypeError), (np.array([True]), TypeError), ([True], TypeError),
    ("123", TypeError), ([-1], ValueError), ([10**6], ValueError), (None, TypeError),
    (np.array([1, 2], dtype=object), TypeError),
])
def test_bad_tokens(dev, bad, exc):
    with pytest.raises(exc) as e:
        dev.inference(bad, max_output=2)
    assert "token" in str(e.value) or "input_tokens" in str(e.value)
    assert dev.inference([1], max_output=1).shape == (1,)   # the device still works


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(max_output=-1), ValueError, "max_output"), (dict(max_output=1.5), TypeError, "max_output"),
    (dict(temperature=float("nan")), ValueError, "temperature"), (dict(temperature=-1), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"), (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=-3), ValueError, "top_k"), (dict(seed=-1), ValueError, "seed"),
    (dict(stop_token_ids=[1.5]), TypeError, "stop_token_ids"),
])
def test_bad_generation_arguments(dev, kwargs, exc, word):
    with pytest.raises(exc) as e:
        dev.inference([1, 2], **kwargs)
    assert word in str(e.value)
    assert isinstance(e.value, BitNetError) or exc is TypeError


# ----------------------------------------------------------------------------- async

def test_async_wait_timeout_abort_and_next_job(long_model, device):
    with BitNet(device) as bn:
        bn.load_weights(long_model)
        bn.inference_async([1, 2, 3], max_output=16000, stop_token_ids=[])
        assert bn.is_busy
        assert bn.wait(10) is False
        with pytest.raises(BitNetError) as e:
            bn.inference_async([4, 5], max_output=5)
        assert e.value.code == ErrorCode.BUSY
        # status advances live
        time.sleep(0.3)
        s1 = bn.status
        time.sleep(0.3)
        s2 = bn.status
        assert s1.state == "RUNNING" and s2.tokens_processed > s1.tokens_processed
        t0 = time.perf_counter()
        bn.abort()
        assert bn.wait(1000) is True
        assert time.perf_counter() - t0 < 1.0
        partial = bn.get_output()
        assert 0 < len(partial) < 16000
        assert bn.status.state == "IDLE" and not bn.is_busy
        out = bn.inference([1, 2, 3], max_output=len(partial), stop_token_ids=[])
        assert np.array_equal(out, partial)   # the aborted job's tokens were the real ones
        assert bn.performance.inference_count == 2


def test_wait_releases_the_gil(long_model, device):
    with BitNet(device) as bn:
        bn.load_weights(long_model)
        bn.inference_async([1, 2, 3], max_output=2000, stop_token_ids=[])
        ticks = []
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.001)

        th = threading.Thread(target=spin)
        th.start()
        assert bn.wait(-1)
        stop.set()
        th.join()
        assert len(ticks) > 5


def test_performance_and_model_info(dev):
    before = dev.performance
    dev.inference([1, 2, 3, 4], max_output=6, stop_token_ids=[])
    after = dev.performance
    assert after.inference_count == before.inference_count + 1
    assert after.total_cycles > before.total_cycles
    assert after.total_cycles == after.dma_cycles + after.compute_cycles
    assert after.compute_cycles > before.compute_cycles and after.dma_cycles > before.dma_cycles
    assert after.tokens_per_second > 0
    info = dev.model_info
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (2, 256, 512)
    assert info.max_seq_len == 512 and info.weight_size > 0
    st = dev.status
    assert st.state == "IDLE" and st.error_code == 0 and st.tokens_processed == 4 + 6


# ----------------------------------------------------------------------------- user slots

@pytest.mark.parametrize("shape", [(1, 1), (37, 100), (64, 257), (5, 1024)])
def test_matmul_is_bitnet_linear(shape, device):
    rng = np.random.default_rng(sum(shape))
    n, k = shape
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    with BitNet(device) as bn:
        slot = bn.load_weights_from_array(w, scale=0.25)
        x = rng.standard_normal((3, k)).astype(np.float32) * 3
        y, acc = bn.matmul(x, slot, return_acc=True)
        sx = np.float32(127) / np.maximum(np.abs(x).max(1, keepdims=True), np.float32(1e-5))
        q = np.clip(np.rint(x * sx), -128, 127).astype(np.int64)
        assert np.array_equal(acc, q @ w.T.astype(np.int64))
        expect = (acc.astype(np.float32) / sx) * np.float32(0.25)
        assert np.array_equal(y, expect)
        # 1-D input, float weights t*beta, and slot reuse
        assert np.array_equal(bn.matmul(x[0], slot), y[0])
        slot2 = bn.load_weights_from_array(w.astype(np.float32) * 0.25)
        assert slot2 != slot
        assert np.array_equal(bn.matmul(x, slot2), y)


def test_matmul_bad_arguments(device):
    with BitNet(device) as bn:
        with pytest.raises(ValueError, match="layer_id"):
            bn.matmul(np.ones(4, np.float32), 3)
        with pytest.raises(ValueError, match="-1, 0 and \\+1"):
            bn.load_weights_from_array(np.full((2, 2), 3, np.int8))
        with pytest.raises(ValueError, match="distinct magnitudes"):
            bn.load_weights_from_array(np.array([[0.1, 0.2]], np.float32))
        with pytest.raises(ValueError, match="2-D"):
            bn.load_weights_from_array(np.zeros(4, np.int8))
        slot = bn.load_weights_from_array(np.ones((2, 4), np.int8))
        with pytest.raises(ValueError, match="features"):
            bn.matmul(np.ones(5, np.float32), slot)
        with pytest.raises(ValueError, match="non-finite"):
            bn.matmul(np.array([1, np.nan, 0, 0], np.float32), slot)
        with pytest.raises(TypeError):
            bn.matmul(np.array(["a"] * 4), slot)
        assert bn.matmul(np.ones(4, np.float32), slot).shape == (2,)


@pytest.mark.parametrize("device", ["sim", pytest.param("sim+ioctl", marks=pytest.mark.slow)])
def test_card_memory_capacity_enforced(device):
    with BitNet(device, profile="kv260") as bn:
        cap = bn.card_info()["weight_capacity"]
        big = np.zeros((4096, 4096), np.int8)   # 4 MiB per slot
        with pytest.raises(BitNetError) as e:
            for i in range(cap // (4096 * 1024) + 2):
                bn.load_weights_from_array(big, layer_id=i)
        assert e.value.code == ErrorCode.NO_MEMORY
        assert "weight memory" in str(e.value)
        assert bn.matmul(np.ones(4096, np.float32), 0).shape == (4096,)   # earlier slots intact


def test_card_fault_puts_device_in_error_and_reset_recovers(dev):
    dev._dev._inject_fault(1)
    with pytest.raises(BitNetError) as e:
        dev.inference([1, 2, 3], max_output=4)
    assert e.value.code == ErrorCode.HW_ERROR
    st = dev.status
    assert st.state == "ERROR" and st.error_code == ErrorCode.HW_ERROR
    with pytest.raises(BitNetError) as e:
        dev.inference([1, 2, 3], max_output=4)
    assert e.value.code == ErrorCode.STATE and "reset()" in str(e.value)
    dev.reset()
    assert dev.status.state == "IDLE" and dev.status.error_code == 0
    assert dev.inference([1, 2, 3], max_output=4, stop_token_ids=[]).shape == (4,)


def test_card_fault_during_logits_and_matmul(dev):
    dev._dev._inject_fault(1)
    with pytest.raises(BitNetError) as e:
        dev.logits([1, 2])
    assert e.value.code == ErrorCode.HW_ERROR
    assert dev.status.state == "ERROR"
    with pytest.raises(BitNetError, match="reset"):
        dev.logits([1, 2])
    dev.reset()
    assert dev.logits([1, 2]).shape == (2, 512)
    slot = dev.load_weights_from_array(np.ones((3, 8), np.int8))
    dev._dev._inject_fault(1)
    with pytest.raises(BitNetError) as e:
        dev.matmul(np.ones(8, np.float32), slot)
    assert e.value.code == ErrorCode.HW_ERROR and dev.status.state == "ERROR"
    dev.reset()
    assert np.allclose(dev.matmul(np.ones(8, np.float32), slot), 8.0)


# ----------------------------------------------------------------------------- host threads

@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_default_threads_follow_the_affinity_mask(tiny_model):
    # `taskset -c 0 python ...`, a cpuset or a container's CPU list: the default is the CPUs
    # the process may run on, not every CPU of the host (threads beyond them wait on each other).
    code = ("import os\nos.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "import bitnet\nwith bitnet.BitNet('sim') as bn:\n    print(bn.card_info()['n_threads'])\n")
    env = {k: v for k, v in os.environ.items() if k != "BITNET_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    with BitNet("sim") as bn:   # here: this process's own CPUs (or $BITNET_NUM_THREADS)
        want = int(os.environ.get("BITNET_NUM_THREADS", len(os.sched_getaffinity(0))))
        assert bn.card_info()["n_threads"] <= max(want, 1)


def test_more_threads_than_cpus_give_the_same_tokens(small_model):
    # The pool's workers yield instead of spinning when they outnumber the CPUs; the work is
    # the same, cut among more threads.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs = {}
    for n in (1, cpus + 2):
        with BitNet("sim", n_threads=n) as bn:
            bn.load_weights(small_model)
            assert bn.card_info()["n_threads"] == n
            runs[n] = bn.inference([1, 2, 3, 4, 5], max_output=12, stop_token_ids=[])
    assert runs[1].shape == (12,) and np.array_equal(runs[1], runs[cpus + 2])


def _cgroup_tree(tmp_path, proc: str, files: dict) -> tuple:
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        f = tmp_path / "fs" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return str(tmp_path / "proc"), str(tmp_path / "fs")


@pytest.mark.parametrize("proc, files, want", [
    # cgroup v2, the smallest quota on the path wins: 1.5 CPUs on the parent, none below.
    ("0::/a/b\n", {"a/b/cpu.max": "max 100000\n", "a/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"}, 1.5),
    # v2 in a cgroup namespace (a container): its own cgroup is "/".
    ("0::/\n", {"cpu.max": "200000 100000\n"}, 2.0),
    # v1 (docker --cpus=3 on a hybrid host), the quota in the cpu,cpuacct hierarchy.
    ("12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n0::/\n",
     {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
      "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3.0),
    # No limit anywhere, an unreadable or garbled file: no quota (0).
    ("0::/a\n", {"a/cpu.max": "max 100000\n"}, 0.0),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.0),
    ("garbage\n", {}, 0.0),
    ("0::/a\n", {"a/cpu.max": "oops\n"}, 0.0),
])
def test_cgroup_cpu_quota(tmp_path, proc, files, want):
    if not sys.platform.startswith("linux"):
        pytest.skip("cgroups are Linux's")
    assert bitnet._core._cgroup_cpu_limit(*_cgroup_tree(tmp_path, proc, files)) == want
    assert bitnet._core._cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path)) == 0.0
