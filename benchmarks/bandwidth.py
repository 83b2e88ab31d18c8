"""Memory read bandwidth of this machine, 1 and N threads (the decode speed bound).

    python benchmarks/bandwidth.py [--gib 1] [--threads 2]

Decode reads every weight byte once per token, so tokens/s <= bandwidth / bytes per token.
"""
from __future__ import annotations

import argparse

from bitnet import _core


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    nbytes = int(a.gib * 2**30)
    kernels = _core.available_kernels()
    for t in sorted({1, a.threads}):
        row = {k: _core._read_bandwidth(nbytes, t, a.reps, k) for k in kernels}
        best = max(row, key=row.get)
        print(f"read bandwidth, {t} thread(s): {row[best]:.1f} GB/s ({best} loads; "
              + ", ".join(f"{k} {v:.1f}" for k, v in row.items()) + ")")


if __name__ == "__main__":
    main()
