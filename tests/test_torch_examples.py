"""The PyTorch examples run as is (examples/pytorch_integration.py, examples/train_to_fpga.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import bitnet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY_DIR = str(Path(bitnet.__file__).resolve().parent.parent)


def _run(script: str, *args: str, timeout: int = 300) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = PY_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("BITNET_DEVICE", "sim")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_pytorch_integration_example_runs():
    out = _run("pytorch_integration.py")
    assert "BitNetModule on 'sim': generated 16 tokens" in out
    assert re.search(r"logits \(1, 5, 512\), next token \d+", out)
    assert "card == PyTorch eval: True" in out


def test_train_to_fpga_example_runs_quick():
    out = _run("train_to_fpga.py", "--task", "copy", "--steps", "40", "--eval", "16")
    m = re.search(r"greedy tokens identical on 16/16 prompts; max \|logits card - PyTorch\| = (\S+)", out)
    assert m and float(m.group(1)) <= 1e-4, out
    assert re.search(r"accuracy on 16 held-out prompts: PyTorch [\d.]+%, sim [\d.]+%", out)


@pytest.mark.slow
def test_train_to_fpga_example_full():
    out = _run("train_to_fpga.py", timeout=600)
    m = re.search(r"accuracy on 200 held-out prompts: PyTorch ([\d.]+)%, sim ([\d.]+)%", out)
    assert m and float(m.group(1)) >= 90.0 and m.group(1) == m.group(2), out
    assert "greedy tokens identical on 200/200 prompts" in out
