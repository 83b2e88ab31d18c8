"""The command line: `bitnet demo` (the main job) and `bitnet info`."""
from __future__ import annotations

import os
import subprocess
import sys

from bitnet.models import make_random_model


def _run(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "bitnet", *args], capture_output=True, text=True, env=env, timeout=300)


def test_demo_makes_a_model_streams_and_reports():
    r = _run("demo", "--preset", "tiny", "--max-tokens", "6")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    gen = [line for line in out.splitlines() if line.startswith("generated:")][0]
    assert len(gen.split(":", 1)[1].split()) == 6
    assert "tokens/s on the host" in out and "card counters: total" in out and "modeled card" in out
    assert "status: IDLE" in out


def test_demo_bad_model_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    r = _run("demo", str(bad))
    assert r.returncode == 2
    assert "bitnet: error:" in r.stderr and "Traceback" not in r.stderr


def test_info_prints_config(tmp_path):
    m = make_random_model(tmp_path / "m.gguf", preset="tiny")
    r = _run("info", str(m))
    assert r.returncode == 0, r.stderr
    assert "activation" in r.stdout and "relu2" in r.stdout
