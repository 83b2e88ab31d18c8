"""Write random BitNet b1.58 models for benchmarks: a Hugging Face directory in the real packed
format (microsoft/bitnet-b1.58-2B-4T layout), converted to GGUF by our converter.

    python benchmarks/make_model.py --shape 2b-4t --type tq2_0 -o bench-2b-tq2_0.gguf
    python benchmarks/make_model.py --shape 700m --type i2_s -o bench-700m-i2_s.gguf

Shapes: 2b-4t (2560 hidden, 30 layers, 20/5 heads, 6912 FFN, 128256 vocab, F16 tied head) and
700m (1bitLLM bitnet_b1_58-large's shape with the 2B-4T graph). The file also carries a small
byte-level BPE vocabulary so llama.cpp loads it.
"""
from __future__ import annotations

import argparse
import time

from bitnet.models import PRESETS, make_random_model


def main() -> None:
    p = argparse.ArgumentParser(description="write a random BitNet b1.58 benchmark model")
    p.add_argument("--shape", default="2b-4t", choices=sorted(PRESETS))
    p.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0", "i2_s", "f16"])
    p.add_argument("--embed-type", default="f16", choices=["f16", "f32", "bf16", "q8_0"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    t0 = time.perf_counter()
    out = make_random_model(a.output, preset=a.shape, seed=a.seed, type=a.type, embed_type=a.embed_type)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
