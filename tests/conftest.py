"""Shared pytest fixtures: tiny seeded HF BitNet checkpoints and their GGUF conversions.

Everything is session-scoped and built lazily, so a test file only pays for the models it uses.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))
try:  # use the installed package when there is one; otherwise the source tree
    import bitnet  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the tests are run
    sys.path.insert(0, str(_TESTS.parent / "python"))

import hf_models  # noqa: E402

# The model shapes of the test-suite. The seeds were picked so that transformers, the float64
# oracle and a float32 re-implementation produce the same 32 greedy tokens for both parity
# prompts (see test_parity.py on why that is not automatic for W1.58A8 models). TQ types need in-features that are multiples of 256 and
# I2_S multiples of 128, hence hidden/ffn in multiples of 256.
MODELS: Dict[str, dict] = {
    # head_dim 64, GQA 4:2, theta 10000
    "gqa64": dict(seed=41, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                  num_kv_heads=2, vocab_size=512, rope_theta=10000.0),
    # head_dim 128, MHA, theta 500000 (the 2B-4T head size and base)
    "mha128": dict(seed=42, hidden_size=256, intermediate_size=768, num_layers=2, num_heads=2,
                   num_kv_heads=2, vocab_size=512, rope_theta=500000.0),
    # HF1BitLLM / Falcon3 scale convention: weight_scale = 1/beta, W = t / weight_scale
    "bitlinear": dict(seed=13, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                      num_kv_heads=2, vocab_size=512, linear_class="bitlinear"),
    # bf16 master weights (quantization_mode online): ternarised by the converter
    "master": dict(seed=34, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                   num_kv_heads=2, vocab_size=512, master=True),
    # the gqa64 tensors split over three shards with an index file
    "sharded": dict(seed=41, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                    num_kv_heads=2, vocab_size=512, rope_theta=10000.0, shards=3),
}


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Callable[[str], Path]:
    """``ckpt(name)`` -> directory of the tiny HF checkpoint ``MODELS[name]`` (built once)."""
    root = tmp_path_factory.mktemp("hf")
    made: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = hf_models.make_packed_checkpoint(root / name, **MODELS[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def gguf_file(ckpt, tmp_path_factory) -> Callable[..., Path]:
    """``gguf_file(name, type, embed_type="f16")`` -> our converter's output (built once)."""
    from bitnet.convert import convert_hf_to_gguf

    root = tmp_path_factory.mktemp("gguf")
    made: Dict[Tuple[str, str, str], Path] = {}

    def get(name: str, type: str, embed_type: str = "f16") -> Path:
        key = (name, type, embed_type)
        if key not in made:
            made[key] = convert_hf_to_gguf(ckpt(name), root / f"{name}-{type}-{embed_type}.gguf",
                                           type=type, embed_type=embed_type)
        return made[key]

    return get


@pytest.fixture(scope="session")
def upstream_gguf(ckpt, tmp_path_factory) -> Callable[..., Path]:
    """``upstream_gguf(name, type, hidden_act=None)`` -> a file as upstream's converter writes it."""
    root = tmp_path_factory.mktemp("upstream")
    made: Dict[Tuple[str, str, object], Path] = {}

    def get(name: str, type: str, hidden_act=None) -> Path:
        key = (name, type, hidden_act)
        if key not in made:
            made[key] = hf_models.write_upstream_style_gguf(
                ckpt(name), root / f"{name}-{type}-{hidden_act}.gguf", type, hidden_act=hidden_act)
        return made[key]

    return get
