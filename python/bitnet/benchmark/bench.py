"""``bitnet bench``: llama-bench-style speed measurements on the device (the simulator by default), with an optional
peer (llama.cpp through llama-cpp-python) run on the same model file in the same process.

Prompt processing (``ppN``) is the time to run an N-token prompt and produce the next
token's logits; text generation (``tgN``) is N tokens decoded one by one after a one-token
prompt. Each test runs ``-r`` times after one warm-up; the table shows mean ± stddev.
Our figures come from :func:`bitnet.benchmark.timing.measure_generation`, the routine the
suite (``python -m bitnet.benchmark``) also uses.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from .timing import measure_generation

__all__ = ["BenchResult", "add_arguments", "bench_bitnet", "bench_llama_cpp", "cpu_features", "format_table", "main"]


@dataclass
class BenchResult:
    """One row of the ``bitnet bench`` table: ``samples`` holds tokens/s of each repetition."""

    engine: str
    test: str
    threads: int
    samples: List[float] = field(default_factory=list)   # tokens/s of each repetition
    extra: str = ""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


def cpu_features() -> str:
    """The SIMD features of this CPU that matter to the kernels (from /proc/cpuinfo)."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp"]
    return " ".join(f for f in wanted if f in flags) or platform.machine()


def _rates(fn: Callable[[], float], reps: int) -> List[float]:
    """``reps`` tokens/s figures from ``fn`` after one warm-up call."""
    fn()
    return [fn() for _ in range(reps)]


def _time_reps(fn: Callable[[], int], reps: int) -> List[float]:
    fn()   # warm-up
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        n = fn()
        out.append(n / (time.perf_counter() - t0))
    return out


def bench_bitnet(model: str, n_prompt: int, n_gen: int, threads: int, reps: int, batch: int = 1,
                 fast_head: bool = False, device: Optional[str] = "sim") -> List[BenchResult]:
    """``pp{n_prompt}`` and ``tg{n_gen}`` tokens/s on ``device``, ``reps`` repetitions each.

    ``n_prompt`` or ``n_gen`` of 0 skips that test; ``batch`` rows decode together in tg
    (the figure counts the tokens of every row). ``device=None`` is the default device.
    """
    from ..core import BitNet

    rng = np.random.default_rng(0)
    results = []
    with BitNet(device, n_threads=threads) as bn:
        bn.load_weights(model, fast_head=fast_head)
        vocab = bn.model_info.vocab_size
        kernel = bn.card_info()["kernel"]
        tag = f"kernel {kernel}" + (", fast head" if fast_head else "")
        if n_prompt > 0:
            prompt = rng.integers(0, vocab, size=n_prompt).astype(np.int32)

            def pp() -> float:
                return measure_generation(bn, [prompt], 1).prompt_tokens_per_s

            results.append(BenchResult("bitnet", f"pp{n_prompt}", threads, _rates(pp, reps), tag))
        if n_gen > 0:
            start = rng.integers(0, vocab, size=(batch, 1)).astype(np.int32)

            def tg() -> float:
                return measure_generation(bn, list(start), n_gen).generated_tokens_per_s

            name = f"tg{n_gen}" + (f" x{batch}" if batch > 1 else "")
            results.append(BenchResult("bitnet", name, threads, _rates(tg, reps), tag))
    return results


def bench_llama_cpp(model: str, n_prompt: int, n_gen: int, threads: int, reps: int) -> List[BenchResult]:
    """The same tests through llama-cpp-python (``pip install .[bench]``)."""
    try:
        from llama_cpp import Llama
    except ImportError as e:   # pragma: no cover - depends on the optional extra
        raise SystemExit(f"--vs llama.cpp needs llama-cpp-python: pip install 'bitnet[bench]' ({e})")
    llm = Llama(model_path=model, n_ctx=max(512, n_prompt + n_gen + 8), n_batch=max(n_prompt, 32),
                n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    results = []
    if n_prompt > 0:
        prompt = rng.integers(0, vocab, size=n_prompt).tolist()

        def pp() -> int:
            llm.reset()
            llm.eval(prompt)
            return n_prompt

        results.append(BenchResult("llama.cpp", f"pp{n_prompt}", threads, _time_reps(pp, reps)))
    if n_gen > 0:
        toks = rng.integers(0, vocab, size=n_gen).tolist()

        def tg() -> int:
            llm.reset()
            for t in toks:
                llm.eval([t])
            return n_gen

        results.append(BenchResult("llama.cpp", f"tg{n_gen}", threads, _time_reps(tg, reps)))
    return results


def format_table(model: str, results: List[BenchResult]) -> str:
    """The llama-bench-style Markdown table of ``results``, with bitnet/peer ratios."""
    size = os.path.getsize(model) / 2**30
    rows = [f"| model | size | engine | threads | test | t/s | notes |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {os.path.basename(model)} | {size:.2f} GiB | {r.engine} | {r.threads} | {r.test} | "
                    f"{r.mean:.2f} ± {r.std:.2f} | {r.extra} |")
    ours = {r.test.split(" ")[0]: r for r in results if r.engine == "bitnet"}
    peer = {r.test: r for r in results if r.engine == "llama.cpp"}
    for test, p in peer.items():
        if test in ours:
            rows.append(f"\nbitnet / llama.cpp {test}: {ours[test].mean / p.mean:.2f}x")
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``bitnet bench``'s options to ``p``."""
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    p.add_argument("-p", "--n-prompt", type=int, default=128)
    p.add_argument("-n", "--n-gen", type=int, default=64)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together in tg")
    p.add_argument("--fast-head", action="store_true", help="use the fast output head (greedy)")
    p.add_argument("--device", default=None, help="sim, sim+ioctl or /dev/bitnetN (default: auto)")
    p.add_argument("--vs", choices=["llama.cpp"], default=None, help="also run a peer on the same file")


def main(args: argparse.Namespace) -> int:
    """Run ``bitnet bench`` with parsed ``args``; print the table; return the exit code."""
    threads = args.threads or os.cpu_count() or 1
    for name, v, lo in (("-p", args.n_prompt, 0), ("-n", args.n_gen, 0), ("-r", args.reps, 1), ("--batch", args.batch, 1)):
        if v < lo:
            raise SystemExit(f"bitnet bench: {name} must be >= {lo}")
    from .. import _core

    print(f"CPU: {platform.processor() or platform.machine()}; features: {cpu_features()}; "
          f"kernels available: {', '.join(_core.available_kernels())}; threads: {threads}")
    results = bench_bitnet(args.model, args.n_prompt, args.n_gen, threads, args.reps, args.batch, args.fast_head,
                           device=getattr(args, "device", None))
    if args.vs == "llama.cpp":
        results += bench_llama_cpp(args.model, args.n_prompt, args.n_gen, threads, args.reps)
    print(format_table(args.model, results))
    return 0
