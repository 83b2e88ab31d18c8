"""The command line: `bitnet demo` (the main job), `generate`/`chat`, `convert` -> `info`, exit status."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import pytest

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


# ---------------------------------------------------------------------------------------------
# bitnet convert -> bitnet info (the acceptance test of issue 8), progress, exit status
# ---------------------------------------------------------------------------------------------

def _type_name(t) -> str:
    import gguf

    import hf_models as hm

    return "I2_S" if int(t.tensor_type) == hm.I2S_TYPE_ID else gguf.GGMLQuantizationType(int(t.tensor_type)).name


@pytest.mark.parametrize("wtype", ["tq2_0", "i2_s"])
def test_convert_then_info_describes_the_file(ckpt, tmp_path, wtype):
    pytest.importorskip("torch")
    import hf_models as hm

    out = tmp_path / f"out-{wtype}.gguf"
    r = _run("convert", str(ckpt("gqa64")), "-o", str(out), "--type", wtype)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {out}\n"          # no progress on stdout (nor on a non-TTY stderr)
    assert "Writing" not in r.stderr and "converting" not in r.stderr
    reader = hm.read_gguf(out)
    kv = hm.gguf_kv(reader)
    arch = kv["general.architecture"]

    r = _run("info", str(out))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert re.search(rf"^architecture\s+{re.escape(arch)}\b", text, re.M), text
    assert re.search(rf"^layers\s+{kv[arch + '.block_count']}$", text, re.M)
    assert kv[arch + ".block_count"] == 2
    assert f"tensors ({len(reader.tensors)};" in text
    for t in reader.tensors:
        shape = " x ".join(str(int(d)) for d in t.shape)
        line = rf"^  {re.escape(t.name)}\s+{_type_name(t)}\s+{shape}\s+{int(t.n_bytes):,}$"
        assert re.search(line, text, re.M), (t.name, text)
    total = sum(int(t.n_bytes) for t in reader.tensors)
    assert re.search(rf"^  all\s+{len(reader.tensors)} tensors\s+[\d,]+ elements\s+{total:,} bytes", text, re.M)
    # metadata: every key, with its type; the loader agrees on the size
    for key in kv:
        assert re.search(rf"^  {re.escape(key)}\s+[A-Z0-9\[\]]+\s+\S", text, re.M), key
    assert re.search(rf"^weight_size\s+{total}$", text, re.M)
    assert "predicted card tokens/s" in text

    r = _run("info", str(out), "--no-load", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["architecture"] == arch and d["layers"] == 2 and d["loadable"]
    assert d["data_offset"] == reader.data_offset and d["file_size"] == out.stat().st_size
    assert {m["key"]: m["value"] for m in d["metadata"]} == kv
    # (hm.read_gguf lists I2_S tensors after the others; the file order is ours)
    assert sorted((t["name"], t["type_id"], t["shape"], t["nbytes"]) for t in d["tensors"]) == sorted(
        (t.name, int(t.tensor_type), [int(x) for x in t.shape], int(t.n_bytes)) for t in reader.tensors)
    assert d["totals"]["all"] == {"tensors": len(reader.tensors), "n_elements": sum(int(t.n_elements) for t in reader.tensors),
                                  "nbytes": total, "nbytes_known": total, "unknown_size": 0}


def test_info_summarises_long_values_and_unknown_types(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from bitnet.cli import main

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    w.add_string("tokenizer.chat_template", "x" * 500)
    w.add_tensor("a.weight", np.zeros((4, 256), np.float32))
    w.add_tensor("b.weight", np.zeros((2, 144), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.add_tensor("zz.weight", np.zeros((4,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    k = data.index(b"zz.weight") + len(b"zz.weight")          # tensor info: n_dims, dims, type id
    struct.pack_into("<I", data, k + 4 + 8 * struct.unpack_from("<I", data, k)[0], 250)
    path.write_bytes(bytes(data))

    assert main(["info", str(path), "--no-load"]) == 0
    out = capsys.readouterr().out
    assert "[1000 strings] first: 'tok0', 'tok1'" in out and "(500 chars)" in out
    assert max(len(line) for line in out.splitlines() if line.startswith("  tokenizer.")) < 120
    assert re.search(r"^  b\.weight\s+Q4_K\s+256 x 2\s+288$", out, re.M)   # gguf knows it; we do not run it
    assert re.search(r"^  zz\.weight\s+\? \(id 250\)\s+4\s+\?$", out, re.M)  # nobody knows id 250
    assert "note: this package cannot load the file" in out
    assert "at least 4,384 bytes" in out and "1 tensor of unknown size" in out
    assert main(["info", str(path), "--no-load", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tensors"][2]["nbytes"] is None and d["totals"]["all"]["nbytes"] is None
    assert main(["info", str(path)]) == 2                        # loading it is a BitNetError
    err = capsys.readouterr().err
    assert err.startswith("bitnet: error:") and "Q4_K" in err and err.count("\n") == 1


@pytest.mark.parametrize("content", [b"not a model", b"", b"GGUF\x03\x00\x00\x00" + b"\xff" * 20])
@pytest.mark.parametrize("flags", [[], ["--no-load"], ["--no-load", "--json"]])
def test_info_on_a_corrupt_file_is_one_line(tmp_path, capsys, content, flags):
    from bitnet.cli import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    assert main(["info", str(bad), *flags]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith("bitnet: error:") and cap.err.count("\n") == 1 and "Traceback" not in cap.err
    assert main(["info", str(tmp_path / "missing.gguf"), *flags]) == 2
    assert "No such file" in capsys.readouterr().err


def test_progress_goes_to_stderr_only(ckpt, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "p.gguf"
    r = _run("convert", str(ckpt("gqa64")), "-o", str(out), "--progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {out}\n"
    assert "converting gqa64" in r.stderr and "Writing" in r.stderr
    quiet = _run("info", str(out), "-q")
    forced = _run("info", str(out), "--progress")
    assert quiet.returncode == forced.returncode == 0
    assert forced.stdout == quiet.stdout                        # identical stdout either way
    assert "loading p.gguf" in forced.stderr and quiet.stderr == ""
    model = str(make_random_model(tmp_path / "tiny.gguf", preset="tiny", seed=3))   # has a tokenizer
    r = _run("generate", "-m", model, "-p", "hi", "-n", "3", "--ids", "--progress")
    assert r.returncode == 0, r.stderr
    assert "loading tiny.gguf" in r.stderr and len(r.stdout.split()) == 3


def test_exit_status_is_documented_and_usage_errors_exit_1(capsys):
    from bitnet.cli import main

    for argv in (["--help"], ["info", "--help"], ["convert", "--help"], ["generate", "--help"], ["chat", "--help"],
                 ["bench", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "exit status:" in text and "BitNetError" in text and "130" in text, argv
    with pytest.raises(SystemExit) as e:
        main(["info"])                                           # missing argument: 1, not argparse's 2
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["convert", "x", "-o", "y", "--type", "q4_0"])
    assert e.value.code == 1
    # The module entry point follows the same scheme.
    from bitnet.convert import main as convert_main

    with pytest.raises(SystemExit) as e:
        convert_main(["x", "--type", "q4_0"])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        convert_main(["--help"])
    assert e.value.code == 0 and "exit status:" in capsys.readouterr().out


def test_progress_default_follows_whether_stderr_is_a_terminal(monkeypatch):
    import io

    from bitnet import _progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    assert _progress.enabled(None) is True and _progress.enabled(False) is False
    with _progress.loading(__file__, True):       # draws on the fake terminal, then erases the line
        pass
    assert "loading test_cli.py" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress.enabled(None) is False and _progress.enabled(True) is True


def test_stdout_closed_early_exits_quietly(tmp_path):
    model = str(make_random_model(tmp_path / "tiny.gguf", preset="tiny"))
    p = subprocess.Popen([sys.executable, "-m", "bitnet", "info", model], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()                  # like `| head` that has read enough, before anything is written
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and err == ""
