"""Every code example of the seed README (../shared/seed/), run as written with only the model
path and the device filled in, checking what each returns. Each runs on "sim" and on
"sim+ioctl" (the kernel transport over the emulated driver, docs/DEVICE_ABI.md).

The PyTorch examples are in tests/test_torch_seed_examples.py (they need torch).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import bitnet
from bitnet import BitNet
from bitnet.models import make_random_model

DEVICES = ["sim", "sim+ioctl"]
# The two longest examples run through sim+ioctl only in the slow suite.
DEVICES_LONG = ["sim", pytest.param("sim+ioctl", marks=pytest.mark.slow)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # The seed calls the file "model.bin"; any name works.
    return str(make_random_model(tmp_path_factory.mktemp("seed") / "model.bin", preset="small", seed=7))


def greedy_reference(model_path, prompt, n, stop=None, device="sim"):
    """Greedy continuation computed independently from full-sequence logits."""
    seq = list(prompt)
    out = []
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        for _ in range(n):
            tok = int(np.argmax(bn.logits(seq)[-1]))
            out.append(tok)
            seq.append(tok)
            if stop is not None and tok in stop:
                break
    return out


def test_basic_example(model_path, capsys, device):
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        input_tokens = np.array([1, 2, 3, 4, 5], dtype=np.int32)
        output = bn.inference(input_tokens, max_output=100)
        print(f"Generated {len(output)} tokens")
        eos = bn.model_config()["stop_token_ids"]
    assert capsys.readouterr().out == f"Generated {len(output)} tokens\n"
    assert output.dtype == np.int32
    assert len(output) == 100 or int(output[-1]) in eos
    assert output[:12].tolist() == greedy_reference(model_path, [1, 2, 3, 4, 5], 12, stop=eos, device=device)[: len(output[:12])]


def test_functional_example(model_path, device):
    from bitnet import bitnet_inference

    output = bitnet_inference(np.array([1, 2, 3, 4, 5]), model_path=model_path, device=device)
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        assert np.array_equal(output, bn.inference([1, 2, 3, 4, 5]))
    assert 1 <= len(output) <= 1024


def test_async_example(model_path, capsys, device):
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        bn.inference_async([1, 2, 3, 4, 5])
        print("Processing...")
        if bn.wait(timeout_ms=5000):
            output = bn.get_output()
            print(f"Got {len(output)} tokens")
        else:
            print("Timeout!")
            bn.abort()
            output = bn.get_output()
        assert bn.wait(5000)
        expect = bn.inference([1, 2, 3, 4, 5])
    out = capsys.readouterr().out
    assert out.startswith("Processing...\n")
    if "Timeout!" not in out:
        assert out.endswith(f"Got {len(output)} tokens\n")
        assert np.array_equal(output, expect)
    else:   # a slow machine: the partial output is a prefix of the full one
        assert np.array_equal(output, expect[: len(output)])


def test_streaming_example(model_path, capsys, device):
    from bitnet.numpy_api import BitNetStream

    with BitNetStream(model_path, device=device) as stream:
        for token in stream.generate([1, 2, 3], max_tokens=100, stop_token_id=2):
            print(token, end=" ", flush=True)
    printed = [int(t) for t in capsys.readouterr().out.split()]
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        expect = bn.inference([1, 2, 3], max_output=100, stop_token_ids=[2])
    assert printed == expect.tolist()


@pytest.mark.parametrize("device", DEVICES_LONG)
def test_batch_example(model_path, device):
    from bitnet import bitnet_batch_inference

    batch = np.array([
        [1, 2, 3, 0, 0],  # padded
        [4, 5, 6, 7, 8],
    ], dtype=np.int32)
    outputs = bitnet_batch_inference(batch, model_path, device=device, pad_token_id=0)
    assert outputs.dtype == np.int32 and outputs.ndim == 2 and outputs.shape[0] == 2
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        for row, prompt in zip(outputs, ([1, 2, 3], [4, 5, 6, 7, 8])):
            alone = bn.inference(prompt)
            assert np.array_equal(row[: len(alone)], alone)
            assert (row[len(alone):] == 0).all()


@pytest.mark.parametrize("device", DEVICES_LONG)
def test_performance_monitoring_example(model_path, capsys, device):
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        for i in range(10):
            bn.inference([1, 2, 3, 4, 5])
        perf = bn.performance
        print(f"Total cycles: {perf.total_cycles}")
        print(f"Tokens/sec: {perf.tokens_per_second}")
    assert perf.inference_count == 10
    assert perf.total_cycles == perf.compute_cycles + perf.dma_cycles > 0
    assert perf.tokens_per_second > 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Total cycles: {perf.total_cycles}", f"Tokens/sec: {perf.tokens_per_second}"]


def test_stream_first_token_arrives_before_the_job_ends(model_path, device):
    from bitnet.numpy_api import BitNetStream

    with BitNetStream(model_path, device=device) as stream:
        gen = stream.generate([1, 2, 3], max_tokens=200, stop_token_id=None, temperature=0.0)
        first = next(gen)
        job = stream.device._job
        assert not job.done            # the device is still producing
        assert stream.device.is_busy
        rest = list(gen)
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        assert [first] + rest == bn.inference([1, 2, 3], max_output=200).tolist()


def test_batch_rows_equal_single_rows_and_run_as_one_batch(model_path, device):
    from bitnet import bitnet_batch_inference

    rng = np.random.default_rng(5)
    # Lengths past the attention blocks (8 prompt rows, 32 cache positions) and below them.
    prompts = [rng.integers(1, 4096, size=n).tolist() for n in (3, 9, 1, 70, 5, 12, 7, 40)]
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        singles = [bn.inference(p, max_output=24, stop_token_ids=[]) for p in prompts]
        c0 = bn.performance_details()["commands"]
        bn.inference(prompts[0], max_output=24, stop_token_ids=[])
        one = bn.performance_details()["commands"] - c0
        c0 = bn.performance_details()["commands"]
        job = bn._dev.submit([np.asarray(p, np.int32) for p in prompts], 24, 0.0, 0, 1.0, 0, [])
        job.wait(-1)
        eight = bn.performance_details()["commands"] - c0
    batch = bitnet_batch_inference(prompts, model_path, device=device, max_output=24, stop_token_ids=[])
    for row, single in zip(batch, singles):
        assert np.array_equal(row, single)
    # One forward pass per step for all eight rows: the card sees as many commands as for
    # one row (each command carries the whole batch). Wall-time ratios are in benchmarks/.
    assert eight == one
