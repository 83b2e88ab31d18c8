"""Inputs that once crashed or hung a fuzz target (tests/fuzz_regressions/) must now load or be
rejected with BitNetError, in a child process so that a crash fails only this test."""
from __future__ import annotations

import glob
import os

import pytest

from test_corrupt_files import run_files

FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fuzz_regressions", "*.gguf")))


@pytest.mark.skipif(not FILES, reason="no fuzz regression inputs recorded yet")
def test_fuzz_regressions():
    results = run_files(FILES)
    assert all(kind in ("OK", "ERR") for kind, _ in results.values()), results
