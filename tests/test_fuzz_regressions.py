"""Inputs that once crashed or hung a fuzz target (tests/fuzz_regressions/) must now be handled,
in a child process so that a crash fails only this test.

* ``*.gguf`` (fuzz/fuzz_gguf.cpp): the model file loads or is rejected with BitNetError.
* ``*.ioctl`` (fuzz/fuzz_ioctl.cpp): the system-call script (format: sim/ioctl_script.h) runs on
  a fresh emulated card with every invariant holding. The fuzzer's seed sessions
  (fuzz/ioctl_seeds.py) are replayed the same way.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from test_corrupt_files import run_files

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(glob.glob(os.path.join(HERE, "fuzz_regressions", "*.gguf")))
SCRIPTS = sorted(glob.glob(os.path.join(HERE, "fuzz_regressions", "*.ioctl")))
sys.path.insert(0, os.path.join(HERE, "..", "fuzz"))
import ioctl_seeds  # noqa: E402

REPLAY = """
import sys
from bitnet import _core
for path in sys.argv[1:]:
    bad, _ = _core._replay_ioctl_script(open(path, "rb").read())
    print(("OK " if not bad else "BAD ") + path + (": " + bad if bad else ""), flush=True)
"""


@pytest.mark.skipif(not FILES, reason="no fuzz regression inputs recorded yet")
def test_fuzz_regressions():
    results = run_files(FILES)
    assert all(kind in ("OK", "ERR") for kind, _ in results.values()), results


def _replay(paths, timeout=120):
    proc = subprocess.run([sys.executable, "-c", REPLAY, *paths], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))
    assert proc.returncode == 0, f"replay crashed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(paths) and all(line.startswith("OK ") for line in lines), proc.stdout


@pytest.mark.skipif(not SCRIPTS, reason="no ioctl fuzz regression inputs recorded yet")
def test_ioctl_fuzz_regressions():
    _replay(SCRIPTS)


def test_ioctl_seed_sessions_replay(tmp_path):
    for name, blob in ioctl_seeds.seeds().items():
        (tmp_path / f"seed-{name}.ioctl").write_bytes(blob)
    _replay(sorted(str(p) for p in tmp_path.iterdir()))


def test_ioctl_seeds_reach_the_deep_paths():
    """The seeds get past the argument checks: slots load, commands run, faults latch and clear."""
    from bitnet import _core

    req = {name: d["request"] for name, d in _core.abi_layout()["ioctls"].items()}
    seeds = ioctl_seeds.seeds()
    bad, ok = _core._replay_ioctl_script(seeds["session"])
    assert bad == ""
    assert ok.get(req["LOAD_SLOT"]) == 2 and ok.get(req["MATMUL"]) == 1 and ok.get(req["WAIT_COMPLETE"]) == 1
    bad, ok = _core._replay_ioctl_script(seeds["fault"])
    assert bad == "" and ok.get(req["MATMUL"], 0) >= 3 and ok.get(req["RESET"]) == 1
    bad, ok = _core._replay_ioctl_script(seeds["legacy"])
    assert bad == "" and ok.get(req["LOAD_WEIGHTS"]) == 1 and ok.get(req["FREE_SLOTS"]) == 1
    bad, _ = _core._replay_ioctl_script(b"")
    assert bad == ""
