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


def _run_stdin(stdin, *args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "bitnet", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=env)


def test_generate_prints_text_and_ids(tmp_path):
    from bitnet import BitNet

    model = str(make_random_model(tmp_path / "tiny.gguf", preset="tiny", seed=3))
    r = _run("generate", "-m", model, "-p", "hello", "-n", "8")
    assert r.returncode == 0, r.stderr
    with BitNet("sim") as bn:
        bn.load_weights(model)
        want = bn.generate_text("hello", 8)
        ids = bn.inference(bn.encode("hello"), 8).tolist()
    assert r.stdout == want + "\n"
    r = _run("generate", "-m", model, "-p", "hello", "-n", "8", "--ids")
    assert r.returncode == 0, r.stderr
    assert [int(t) for t in r.stdout.split()] == ids


def test_chat_driven_through_stdin(tmp_path):
    model = str(make_random_model(tmp_path / "tiny.gguf", preset="tiny", seed=3))
    r = _run_stdin("hi there\n\nhow are you\n/exit\nnever read\n", "chat", "-m", model, "-n", "6", "--seed", "1")
    assert r.returncode == 0, r.stderr
    # one reply line per user message (empty lines are skipped; /exit ends the session)
    assert len(r.stdout.rstrip("\n").split("\n")) >= 2 and "Traceback" not in r.stderr


def test_text_commands_errors_are_one_line(tmp_path):
    r = _run("generate", "-m", str(tmp_path / "missing.gguf"), "-p", "x")
    assert r.returncode == 2 and r.stderr.startswith("bitnet: error:") and "Traceback" not in r.stderr
    r = _run("--debug", "generate", "-m", str(tmp_path / "missing.gguf"), "-p", "x")
    assert r.returncode != 0 and "Traceback" in r.stderr
