"""Concurrency: shared handles, several handles, abort/close during jobs, timeouts, Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bitnet import BitNet, BitNetError, ErrorCode
from bitnet.models import make_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("cc") / "m.gguf", preset="tiny", seed=9))


@pytest.fixture(scope="module")
def expected(model):
    with BitNet("sim") as bn:
        bn.load_weights(model)
        return {p: bn.inference(list(range(1, p + 1)), 6, stop_token_ids=[]).tolist() for p in range(1, 9)}


def test_eight_threads_share_one_handle(model, expected):
    errors, results = [], []
    with BitNet("sim") as bn:
        bn.load_weights(model)

        def worker(i):
            for r in range(100 // 8 + 1):
                p = (i + r) % 8 + 1
                try:
                    out = bn.inference(list(range(1, p + 1)), 6, stop_token_ids=[])
                    results.append((p, out.tolist()))
                except BitNetError as e:
                    if e.code != ErrorCode.BUSY:
                        errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert results, "every call got BUSY"
        for p, out in results:
            assert out == expected[p]
        assert bn.status.state == "IDLE"
        assert bn.inference([1, 2], 6, stop_token_ids=[]).tolist() == expected[2]


def test_jobs_that_end_at_once_from_eight_threads(model, expected):
    # Jobs with max_output=0 end as soon as their thread starts, so the thread can release the
    # device before submit() has stored it in Device::worker_; the next submit() then joined
    # nothing and assigned to a still-joinable std::thread (std::terminate: the process aborts,
    # under ASan with no report). In a child process, so an abort fails this test only.
    script = f"""
import threading, time
from bitnet import BitNet, BitNetError, ErrorCode
started = busy = 0
with BitNet("sim", n_threads=1) as bn:
    bn.load_weights({model!r})
    stop = time.perf_counter() + 1.5
    def worker():
        global started, busy
        while time.perf_counter() < stop:
            try:
                bn.inference_async([1], 0, stop_token_ids=[])
                started += 1
            except BitNetError as e:
                if e.code != ErrorCode.BUSY:
                    raise
                busy += 1
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t0 = time.perf_counter()
    while bn.is_busy:
        assert time.perf_counter() - t0 < 30
        time.sleep(0.001)
    assert bn.status.state == "IDLE"
    print("RESULT", started, busy, bn.inference([1, 2], 6, stop_token_ids=[]).tolist(), flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
    started = int(line.split()[1])
    assert started > 0
    assert line.split(None, 3)[3] == str(expected[2])


def test_four_handles_one_file(model, expected):
    outs, errors = {}, []

    def worker(i):
        try:
            with BitNet("sim", n_threads=1) as bn:
                bn.load_weights(model)
                outs[i] = [bn.inference(list(range(1, p + 1)), 6, stop_token_ids=[]).tolist() for p in range(1, 9)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert outs[i] == [expected[p] for p in range(1, 9)]


def test_abort_and_close_during_jobs_repeated(model):
    for r in range(100):
        bn = BitNet("sim", n_threads=1 + r % 2)
        bn.load_weights(model)
        bn.inference_async([1, 2, 3], 400, stop_token_ids=[])
        if r % 3 == 0:
            bn.abort()
            assert bn.wait(5000)
            assert bn.status.state == "IDLE"
        elif r % 3 == 1:
            assert bn.wait(0) in (False, True)
        bn.close()          # closes while a job may still run: aborts and joins it
        with pytest.raises(BitNetError):
            bn.status


def test_wait_timeouts(model):
    with BitNet("sim") as bn:
        bn.load_weights(model)
        bn.inference_async([1, 2, 3], 500, stop_token_ids=[])
        t0 = time.perf_counter()
        while not bn.wait(1):
            assert time.perf_counter() - t0 < 30
        assert len(bn.get_output()) == 500
        assert bn.status.state == "IDLE"


def test_keyboard_interrupt_during_blocking_inference(tmp_path):
    # A "small" model and 1000 tokens: long enough that the signal lands during the call (the
    # tiny model's 500 tokens finish in under 50 ms).
    model = str(make_random_model(tmp_path / "small.gguf", preset="small", seed=9))
    script = tmp_path / "ctrlc.py"
    script.write_text(f"""
import sys, time
import bitnet
bn = bitnet.BitNet("sim", n_threads=1)
bn.load_weights({model!r})
print("READY", flush=True)
try:
    bn.inference([1, 2, 3], max_output=1000, stop_token_ids=[])
    print("FINISHED", flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED", bn.status.state, bn.is_busy, len(bn.get_output()), flush=True)
    out = bn.inference([1, 2], 3, stop_token_ids=[])
    print("AFTER", len(out), flush=True)
""")
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    lines = out.strip().splitlines()
    if lines and lines[0] == "FINISHED":
        pytest.skip("the job finished before the signal arrived")
    assert lines[0].startswith("INTERRUPTED IDLE False"), lines
    assert lines[1] == "AFTER 3"


# ---------------------------------------------------------------------------- each x100
def test_four_handles_one_file_repeated(model, expected):
    # 100 rounds of 4 handles on one file, opened, loaded, run and closed concurrently.
    errors = []

    def worker(i, r):
        try:
            p = 1 + (i + r) % 8
            with BitNet("sim", n_threads=1) as bn:
                bn.load_weights(model)
                if bn.inference(list(range(1, p + 1)), 6, stop_token_ids=[]).tolist() != expected[p]:
                    errors.append(f"round {r} handle {i}: wrong tokens")
        except Exception as e:  # noqa: BLE001
            errors.append(f"round {r} handle {i}: {e!r}")

    for r in range(100):
        threads = [threading.Thread(target=worker, args=(i, r)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:5]


def test_wait_timeouts_repeated(model, expected):
    # 100 jobs, each polled with short timeouts until done: a timed-out wait never loses or
    # corrupts output, and the result equals the synchronous one.
    with BitNet("sim") as bn:
        bn.load_weights(model)
        for r in range(100):
            p = 1 + r % 8
            bn.inference_async(list(range(1, p + 1)), 6, stop_token_ids=[])
            t0 = time.perf_counter()
            while not bn.wait(r % 3):          # 0, 1 or 2 ms
                assert time.perf_counter() - t0 < 30
            assert bn.get_output().tolist() == expected[p]
            assert bn.status.state == "IDLE" and not bn.is_busy


def _ctrl_c_rounds(tmp_path, name, setup, call, rounds, delay):
    """Run ``call`` ``rounds`` times in a subprocess, each time with a real SIGINT sent after
    ``delay(r)`` seconds (``setup`` defines ``bn``, the BitNet handle). Returns (interrupted,
    finished before the signal, bad), where bad counts rounds after which the device was not
    IDLE, was busy, or the next inference was not exact."""
    script = tmp_path / f"{name}.py"
    script.write_text(f"""
import os, signal, threading, time
{setup}
ref = bn.inference([1, 2], 3, stop_token_ids=[]).tolist()
interrupted = finished = bad = 0
for r in range({rounds}):
    timer = threading.Timer({delay}, os.kill, (os.getpid(), signal.SIGINT))
    done = False
    try:
        try:
            timer.start()
            {call}
            done = True
        finally:
            timer.join()
            time.sleep(0.01)   # a signal sent just after the call returned lands here
    except KeyboardInterrupt:
        pass
    finished += done
    interrupted += not done
    if bn.status.state != "IDLE" or bn.is_busy or bn.inference([1, 2], 3, stop_token_ids=[]).tolist() != ref:
        bad += 1
print("RESULT", interrupted, finished, bad, flush=True)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1].split()
    interrupted, finished, bad = map(int, line[1:])
    return interrupted, finished, bad


def test_keyboard_interrupt_repeated(model, tmp_path):
    # 100 real SIGINTs, each during a blocking inference (sent at varying moments): the call
    # raises KeyboardInterrupt, the device is IDLE and not busy, and the next inference is exact.
    interrupted, finished, bad = _ctrl_c_rounds(
        tmp_path, "ctrlc100", f"import bitnet\nbn = bitnet.BitNet('sim', n_threads=1)\nbn.load_weights({model!r})",
        "bn.inference([1, 2, 3], max_output=400, stop_token_ids=[])", 100, "0.002 + 0.0003 * (r % 20)")
    print(f"Ctrl-C x100: {interrupted} interrupted, {finished} finished before the signal, {bad} bad")
    assert bad == 0 and interrupted + finished == 100 and interrupted >= 50


_CTRL_C_CALLS = {
    # Each generates up to 400 tokens from [1, 2, 3] and is interrupted mid-way.
    "stream": ("from bitnet import BitNetStream\nh = BitNetStream({model!r})\nbn = h._bn",
               "for _ in h.generate([1, 2, 3], max_tokens=400, stop_token_id=None): pass"),
    "torch": ("import torch\nfrom bitnet import BitNetModule\nh = BitNetModule('sim', {model!r}, n_threads=1)\n"
              "bn = h.bitnet",
              "h.forward(torch.tensor([1, 2, 3]), max_length=400, stop_token_ids=[])"),
}


@pytest.mark.parametrize("kind", sorted(_CTRL_C_CALLS))
def test_keyboard_interrupt_in_generators_and_torch(model, tmp_path, kind):
    # Ctrl-C while BitNetStream.generate is being iterated, or during BitNetModule.forward
    # (which waits for its job in short slices): the job is aborted, never orphaned; the device
    # is IDLE and the next call exact. 30 signals at varying moments.
    if kind == "torch":
        pytest.importorskip("torch")
    setup, call = _CTRL_C_CALLS[kind]
    interrupted, finished, bad = _ctrl_c_rounds(tmp_path, f"ctrlc_{kind}", setup.format(model=model), call, 30,
                                                "0.003 + 0.0005 * (r % 10)")
    assert bad == 0 and interrupted + finished == 30 and interrupted >= 10, (interrupted, finished, bad)


def test_close_during_synchronous_calls(model):
    # close() from another thread while logits()/matmul()/load_weights() run: close waits for the
    # call (the transport is not torn down under it); each call returns its result or raises
    # CLOSED, never crashes; 20 rounds at varying moments.
    rng = np.random.default_rng(3)
    w = rng.integers(-1, 2, size=(256, 512)).astype(np.int8)
    for r in range(20):
        bn = BitNet("sim", n_threads=1)
        bn.load_weights(model)
        lid = bn.load_weights_from_array(w)
        outcomes, unexpected = [], []

        def call(kind):
            try:
                for _ in range(5):
                    if kind == 0:
                        bn.logits(list(range(1, 33)))
                    elif kind == 1:
                        bn.matmul(rng.integers(-127, 128, size=(16, 512)).astype(np.int8), lid)
                    else:
                        bn.load_weights(model)
                outcomes.append("done")
            except BitNetError as e:
                (outcomes if e.code in (ErrorCode.CLOSED, ErrorCode.BUSY) else unexpected).append(e)

        threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.001 * (r % 5))
        bn.close()
        for t in threads:
            t.join()
        assert not unexpected, unexpected
        with pytest.raises(BitNetError) as ei:
            bn.logits([1, 2])
        assert ei.value.code == ErrorCode.CLOSED
