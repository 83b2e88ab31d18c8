"""The fast output head: greedy tokens identical to the exact head, few rows re-scored."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import BitNet
from bitnet.models import make_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("fh") / "m.gguf", preset="small", seed=21))


def test_fast_head_greedy_identical(model):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 4096, size=n).tolist() for n in (1, 3, 17, 64)]
    with BitNet("sim") as exact, BitNet("sim") as fast:
        exact.load_weights(model)
        fast.load_weights(model, fast_head=True)
        for p in prompts:
            a = exact.inference(p, 48, stop_token_ids=[])
            b = fast.inference(p, 48, stop_token_ids=[])
            assert np.array_equal(a, b)
        d = fast.performance_details()
        assert d["head_calls"] == 4 * 48
        # Only a handful of the 4096 rows need the full-precision pass per token.
        assert 1 <= d["head_rescored"] / d["head_calls"] < 64
        assert exact.performance_details()["head_calls"] == 0


def test_fast_head_sampling_uses_exact_logits(model):
    with BitNet("sim") as exact, BitNet("sim") as fast:
        exact.load_weights(model)
        fast.load_weights(model, fast_head=True)
        a = exact.inference([5, 6, 7], 24, temperature=0.9, seed=3, stop_token_ids=[])
        b = fast.inference([5, 6, 7], 24, temperature=0.9, seed=3, stop_token_ids=[])
        assert np.array_equal(a, b)
        assert fast.performance_details()["head_calls"] == 0


def test_fast_head_batch(model):
    with BitNet("sim") as fast, BitNet("sim") as exact:
        fast.load_weights(model, fast_head=True)
        exact.load_weights(model)
        # 11 rows: one full group of 8 scored together against the int8 copy, then 3 more.
        rng = np.random.default_rng(5)
        rows = [np.array([1, 2, 3], np.int32), np.array([9] * 10, np.int32)] + [
            rng.integers(0, 4096, size=int(n)).astype(np.int32) for n in rng.integers(1, 20, size=9)]
        job = fast._dev.submit(rows, 16, 0.0, 0, 1.0, 0, [])
        job.wait(-1)
        for i, r in enumerate(rows):
            assert np.array_equal(job.tokens(i), exact.inference(r, 16, stop_token_ids=[]))


def test_fast_head_reads_full_rows_from_the_file(model, tmp_path):
    # The fast head gives back the in-memory full-precision head and reads the few rows it
    # re-scores (and the tied embedding's rows) from the file: a file truncated under a loaded
    # model is a clear error, not a crash.
    import os
    import shutil

    from bitnet import BitNetError

    path = tmp_path / "m.gguf"
    shutil.copyfile(model, path)
    with BitNet("sim") as exact, BitNet("sim") as fast:
        exact.load_weights(model)
        fast.load_weights(str(path), fast_head=True)
        assert np.array_equal(fast.inference([4, 5, 6], 8, stop_token_ids=[]),
                              exact.inference([4, 5, 6], 8, stop_token_ids=[]))
        os.truncate(path, 4096)
        with pytest.raises(BitNetError, match="cannot read"):
            fast.inference([4, 5, 6], 8, stop_token_ids=[])


def test_fast_head_exact_ties_across_chunks(model, tmp_path):
    # Exact ties: the head row of the exact head's first greedy token is copied into rows of
    # every 1024-row chunk the int8 pass scores separately (one below it). All copies get the
    # same logit, so the exact head picks the lowest index, and the fast head must too: its
    # candidates are kept chunk by chunk while the best lower bound grows, then filtered by
    # the final one, in row order. Also with 8 rows scored together (the residual codes).
    import shutil

    import gguf

    prompt = [11, 12, 13, 14]
    with BitNet("sim") as exact:
        exact.load_weights(model)
        top = int(exact.inference(prompt, 1, stop_token_ids=[])[0])
    path = tmp_path / "ties.gguf"
    shutil.copyfile(model, path)
    reader = gguf.GGUFReader(str(path), "r+")
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight").data   # tied head [V, D]
    V = emb.shape[0]
    copies = sorted({3, 1100, 2300, V - 1} - {top} - set(prompt))
    assert V > 3 * 1024 and copies
    for c in copies:
        emb[c] = emb[top]
    emb.flush()
    del reader, emb
    with BitNet("sim") as exact, BitNet("sim") as fast:
        exact.load_weights(str(path))
        fast.load_weights(str(path), fast_head=True)
        a = exact.inference(prompt, 12, stop_token_ids=[])
        assert int(a[0]) == min(copies + [top])
        assert np.array_equal(fast.inference(prompt, 12, stop_token_ids=[]), a)
        rows = [np.array(prompt, np.int32)] * 8
        job = fast._dev.submit(rows, 12, 0.0, 0, 1.0, 0, [])
        job.wait(-1)
        for i in range(8):
            assert np.array_equal(job.tokens(i), a)
