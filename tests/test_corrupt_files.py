"""Corrupt model files (issue: never crash, never hang): every variant either raises
BitNetError or, when only weight values were damaged, loads and runs. Files run in a child
process so that a crash fails the test instead of killing pytest, with a per-file timeout."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bitnet.models import make_random_model
import corrupt_gen

HERE = os.path.dirname(os.path.abspath(__file__))


def run_files(paths, per_file_timeout=20.0):
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "corrupt_runner.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    import threading

    threading.Thread(target=lambda: (proc.stdin.write("\n".join(paths) + "\n"), proc.stdin.close()), daemon=True).start()
    results, current, last = {}, None, time.monotonic()
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if not sel.select(timeout=1.0):
            if current and time.monotonic() - last > per_file_timeout:
                proc.kill()
                pytest.fail(f"hang: {current} did not finish within {per_file_timeout} s")
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        kind, _, rest = line.strip().partition(" ")
        last = time.monotonic()
        if kind == "START":
            current = rest
        else:
            results[rest.split(" ")[0]] = (kind, rest)
            current = None
    proc.wait(timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"the loader process died (exit {proc.returncode}) on {current}: {proc.stderr.read()[-2000:]}")
    return results


def _check(tmp_path, n_random, limit=None):
    base = make_random_model(tmp_path / "base.gguf", preset="tiny", seed=2)
    paths = []
    for i, (name, blob) in enumerate(corrupt_gen.variants(str(base), n_random=n_random)):
        p = tmp_path / f"v{i:05d}.gguf"
        p.write_bytes(blob)
        paths.append(str(p))
        if limit and len(paths) >= limit:
            break
    results = run_files(paths)
    assert len(results) == len(paths)
    bad = [r for r in results.values() if r[0] == "EXC"]
    assert not bad, bad[:5]
    n_err = sum(1 for r in results.values() if r[0] == "ERR")
    n_ok = sum(1 for r in results.values() if r[0] == "OK")
    print(f"{len(paths)} corrupted files: {n_err} rejected with BitNetError, {n_ok} loaded and ran")
    assert n_err > len(paths) // 2
    return len(paths)


def test_corrupt_files_subset(tmp_path):
    assert _check(tmp_path, n_random=60) >= 200


@pytest.mark.slow
def test_corrupt_files_full(tmp_path):
    assert _check(tmp_path, n_random=450) >= 1000
