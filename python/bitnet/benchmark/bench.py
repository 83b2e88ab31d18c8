"""``bitnet bench``: llama-bench-style speed measurements on the device (the simulator by default), with an optional
peer (llama.cpp through llama-cpp-python) run on the same model file in the same process.

Prompt processing (``ppN``) is the time to run an N-token prompt and produce the next
token's logits; text generation (``tgN``) is N tokens decoded one by one after a one-token
prompt. With ``-d D`` (llama-bench's depth) both run with D tokens of context already in the
KV cache: ``ppN @ dD`` is N / (time to first token of a D + N prompt - that of its first D
tokens), and ``tgN @ dD`` the N decode steps after a D-token prompt. Each test runs ``-r``
times after one warm-up; the table shows mean ± stddev.
Our figures come from :func:`bitnet.benchmark.timing.measure_generation`, the routine the
suite (``python -m bitnet.benchmark``) also uses.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from .timing import machine_read_bandwidth, measure_generation

# Bytes per read-bandwidth sample taken next to a tg repetition (bench_bitnet(bandwidth=True)):
# far beyond any last-level cache, and quick (two passes, about 20 ms each at 30 GB/s).
ADJACENT_BANDWIDTH_BYTES = 256 << 20

__all__ = ["BenchResult", "DecodeInfo", "add_arguments", "bench_bitnet", "bench_llama_cpp", "cpu_features", "format_table", "main"]


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


def _depth_suffix(depth: int) -> str:
    return f" @ d{depth}" if depth > 0 else ""


def bench_bitnet(model: str, n_prompt: int, n_gen: int, threads: int, reps: int, batch: Union[int, Sequence[int]] = 1,
                 fast_head: bool = False, device: Optional[str] = "sim",
                 decode: Optional[List["DecodeInfo"]] = None, progress: bool = False,
                 depth: int = 0, bandwidth: bool = False) -> List[BenchResult]:
    """``pp{n_prompt}`` and ``tg{n_gen}`` tokens/s on ``device``, ``reps`` repetitions each.

    ``n_prompt`` or ``n_gen`` of 0 skips that test; ``batch`` rows (one size or several) decode
    together in tg (the figure counts the tokens of every row). ``depth`` tokens of context
    precede both tests (see the module's docstring). ``device=None`` is the default
    device. If ``decode`` is a list, a :class:`DecodeInfo` (bytes read per decode step, step
    time, peak RSS) is appended to it for every tg test. ``progress=True`` shows a spinner on
    stderr while the model loads. ``bandwidth=True`` also measures the machine's read
    bandwidth right before and right after each tg repetition (:data:`ADJACENT_BANDWIDTH_BYTES`
    per sample), into each :class:`DecodeInfo`: on a shared host the bandwidth moves from one
    second to the next, so only a sample taken next to a repetition is its bound.
    """
    from .._progress import loading
    from ..core import BitNet
    from .suite import _head_bytes, peak_rss_bytes, reset_peak_rss

    batches = [batch] if isinstance(batch, int) else list(batch)
    rng = np.random.default_rng(0)
    results = []
    with BitNet(device, n_threads=threads) as bn:
        with loading(model, progress):
            bn.load_weights(model, fast_head=fast_head)
        vocab = bn.model_info.vocab_size
        kernel = bn.card_info()["kernel"]
        tag = f"kernel {kernel}" + (", fast head" if fast_head else "")
        if n_prompt > 0:
            prompt = rng.integers(0, vocab, size=depth + n_prompt).astype(np.int32)

            def pp() -> float:
                if depth == 0:
                    return measure_generation(bn, [prompt], 1).prompt_tokens_per_s
                # The prompt's last n_prompt tokens, after its first `depth` ones: the difference
                # of the two prompts' times to the first token.
                whole = measure_generation(bn, [prompt], 1).first_token_seconds
                context = measure_generation(bn, [prompt[:depth]], 1).first_token_seconds
                return n_prompt / (whole - context) if whole > context else float("nan")

            results.append(BenchResult("bitnet", f"pp{n_prompt}{_depth_suffix(depth)}", threads, _rates(pp, reps), tag))
        for b in batches if n_gen > 0 else []:
            start = rng.integers(0, vocab, size=(b, max(1, depth))).astype(np.int32)
            timings: List[Any] = []
            around: List[Any] = []   # (bandwidth before, after) of each repetition
            peak = [0]               # peak RSS over the repetitions (not over the bandwidth samples)
            # The samples' buffers must not count as the engine's memory, so they need a peak
            # that can be reset (Linux): without one, the bound is the one measured at the end.
            sample = reset_peak_rss() and bandwidth

            def tg() -> float:
                warm_up = not timings
                before = 0.0
                if sample and not warm_up:
                    before = machine_read_bandwidth(ADJACENT_BANDWIDTH_BYTES, threads, 1)
                    reset_peak_rss()
                if depth == 0:
                    timings.append(measure_generation(bn, list(start), n_gen))
                    rate = timings[-1].generated_tokens_per_s
                else:
                    # n_gen decode steps after the context's forward pass (which gives token 1).
                    timings.append(measure_generation(bn, list(start), n_gen + 1))
                    rate = timings[-1].decode_tokens_per_s
                peak[0] = max(peak[0], peak_rss_bytes())
                if sample and not warm_up:
                    around.append((before, machine_read_bandwidth(ADJACENT_BANDWIDTH_BYTES, threads, 1)))
                return rate

            name = f"tg{n_gen}{_depth_suffix(depth)}" + (f" x{b}" if b > 1 else "")
            results.append(BenchResult("bitnet", name, threads, _rates(tg, reps), tag))
            if decode is not None:
                steps = [t.decode_seconds / max(1, t.generated_tokens - 1) for t in timings[1:]]
                decode.append(DecodeInfo(
                    test=name, threads=threads, fast_head=fast_head, batch=b,
                    weight_bytes=int(bn.card_info()["weight_used"]),
                    # the fast head reads its int8 copy (one byte per weight) plus a few exact rows
                    head_bytes=vocab * int(bn.model_config()["hidden_size"]) if fast_head else _head_bytes(model),
                    kv_bytes=b * _kv_bytes_per_step(bn.model_config(), depth, n_gen),
                    step_seconds=statistics.median(steps) if steps else float("nan"),
                    peak_rss_bytes=peak[0], file_bytes=os.path.getsize(model),
                    rep_step_seconds=steps, rep_bandwidth_gbps=[(x + y) / 2 for x, y in around]))
    return results


@dataclass
class DecodeInfo:
    """What one tg test read per decode step, and how fast: the bandwidth-bound view."""

    test: str
    threads: int
    fast_head: bool
    batch: int
    weight_bytes: int        # ternary weights on the card, all read once per step
    head_bytes: int          # output head read per step: the file's tensor (exact) or its int8 copy (fast)
    step_seconds: float      # median time of one decode step (first token -> last token / steps)
    peak_rss_bytes: int      # peak resident memory during the test (VmHWM, reset before it)
    file_bytes: int
    kv_bytes: int = 0        # KV cache read per step (fp32 K and V of every layer), mean over the steps
    rep_step_seconds: List[float] = field(default_factory=list)     # median step of each repetition
    # the machine's read bandwidth next to each repetition (mean of the samples right before and
    # right after it); empty unless bench_bitnet(bandwidth=True)
    rep_bandwidth_gbps: List[float] = field(default_factory=list)

    @property
    def bytes_per_step(self) -> int:
        return self.weight_bytes + self.head_bytes + self.kv_bytes

    @property
    def gbps(self) -> float:
        return self.bytes_per_step / self.step_seconds / 1e9

    @property
    def rep_fractions(self) -> List[float]:
        """Each repetition's read rate as a fraction of the bandwidth measured next to it."""
        return [self.bytes_per_step / t / 1e9 / bw
                for t, bw in zip(self.rep_step_seconds, self.rep_bandwidth_gbps) if t > 0 and bw > 0]


def _kv_bytes_per_step(config: dict, depth: int, n_gen: int) -> int:
    """fp32 K and V bytes one sequence's decode step reads, averaged over ``n_gen`` steps after
    ``depth`` (at least 1) prompt tokens."""
    per_pos = 2 * 4 * int(config["num_layers"]) * int(config["num_kv_heads"]) * int(config["head_dim"])
    return int(per_pos * (max(1, depth) + n_gen / 2))


def bench_llama_cpp(model: str, n_prompt: int, n_gen: int, threads: int, reps: int, depth: int = 0) -> List[BenchResult]:
    """The same tests through llama-cpp-python (``pip install .[bench]``)."""
    try:
        from llama_cpp import Llama
    except ImportError as e:   # pragma: no cover - depends on the optional extra
        raise SystemExit(f"--vs llama.cpp needs llama-cpp-python: pip install 'bitnet[bench]' ({e})")
    llm = Llama(model_path=model, n_ctx=max(512, depth + max(n_prompt, n_gen) + 8), n_batch=max(n_prompt, 32),
                n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    context = rng.integers(0, vocab, size=depth).tolist()
    results = []

    def timed(tokens: List[int], one_by_one: bool) -> float:
        """tokens/s of evaluating ``tokens`` after ``context`` (whose evaluation is not timed)."""
        llm.reset()
        if context:
            llm.eval(context)
        t0 = time.perf_counter()
        if one_by_one:
            for t in tokens:
                llm.eval([t])
        else:
            llm.eval(tokens)
        return len(tokens) / (time.perf_counter() - t0)

    if n_prompt > 0:
        prompt = rng.integers(0, vocab, size=n_prompt).tolist()
        results.append(BenchResult("llama.cpp", f"pp{n_prompt}{_depth_suffix(depth)}", threads,
                                   _rates(lambda: timed(prompt, False), reps)))
    if n_gen > 0:
        toks = rng.integers(0, vocab, size=n_gen).tolist()
        results.append(BenchResult("llama.cpp", f"tg{n_gen}{_depth_suffix(depth)}", threads,
                                   _rates(lambda: timed(toks, True), reps)))
    return results


def format_table(model: str, results: List[BenchResult]) -> str:
    """The llama-bench-style Markdown table of ``results``, with bitnet/peer ratios."""
    size = os.path.getsize(model) / 2**30
    rows = [f"| model | size | engine | threads | test | t/s | notes |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {os.path.basename(model)} | {size:.2f} GiB | {r.engine} | {r.threads} | {r.test} | "
                    f"{r.mean:.2f} ± {r.std:.2f} | {r.extra} |")
    peer = {(r.test, r.threads): r for r in results if r.engine == "llama.cpp"}
    for r in results:
        p = peer.get((r.test, r.threads)) if r.engine == "bitnet" and " x" not in r.test else None
        if p is not None and p.mean > 0:
            head = ", fast head" if "fast head" in r.extra else ""
            rows.append(f"\nbitnet / llama.cpp {r.test} ({r.threads} threads{head}): {r.mean / p.mean:.2f}x")
    return "\n".join(rows)


def _int_list(text: str, name: str, lo: int) -> List[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"bitnet bench: {name} must be an integer or a comma-separated list, got {text!r}")
    if not vals or min(vals) < lo:
        raise SystemExit(f"bitnet bench: {name} values must be >= {lo}, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``bitnet bench``'s options to ``p``."""
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    p.add_argument("-p", "--n-prompt", type=int, default=128)
    p.add_argument("-n", "--n-gen", type=int, default=64)
    p.add_argument("-t", "--threads", default=None, help="thread count, or a list such as 1,2 (default: the CPUs this process may use)")
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("-d", "--depth", type=int, default=0,
                   help="tokens of context already in the KV cache before each test (llama-bench's -d)")
    p.add_argument("--batch", default="1", help="sequences decoded together in tg; a list such as 1,8 runs each")
    p.add_argument("--head", default=None, choices=["exact", "fast", "both"],
                   help="output head: exact (default), fast (greedy-exact int8 scoring), or both in one run")
    p.add_argument("--fast-head", action="store_true", help="same as --head fast")
    p.add_argument("--device", default=None, help="sim, sim+ioctl or /dev/bitnetN (default: auto)")
    p.add_argument("--vs", choices=["llama.cpp"], default=None, help="also run a peer on the same file")
    p.add_argument("--bandwidth", action="store_true",
                   help="also measure the machine's read bandwidth (right before and after every tg "
                        "repetition, and once per thread count at the end) and report each tg test "
                        "against that bound")


def _decode_report(decode: List[DecodeInfo], bandwidth: dict) -> str:
    lines = ["", "decode (per step: bytes read = card weights + output head; peak RSS during the test):"]
    for d in decode:
        line = (f"  {d.test} t={d.threads}{' fast head' if d.fast_head else ''}: "
                f"{d.bytes_per_step / 1e6:.0f} MB/step ({d.weight_bytes / 1e6:.0f} weights + {d.head_bytes / 1e6:.0f} head"
                + (f" + {d.kv_bytes / 1e6:.0f} KV cache" if d.kv_bytes else "") + "), "
                f"{d.step_seconds * 1e3:.1f} ms/step = {d.gbps:.1f} GB/s; "
                f"peak RSS {d.peak_rss_bytes / 2**20:.0f} MiB = {d.peak_rss_bytes / d.file_bytes:.2f}x the file")
        fractions = d.rep_fractions
        if fractions:
            # Each repetition against the bandwidth measured next to it; the medians of the
            # steps and of the samples come from different repetitions, so no ratio of them.
            bw = statistics.median(d.rep_bandwidth_gbps)
            line += (f"; machine {bw:.1f} GB/s (median; {min(d.rep_bandwidth_gbps):.1f}-"
                     f"{max(d.rep_bandwidth_gbps):.1f}, measured right before and after each of the "
                     f"{len(fractions)} repetitions) -> bound {bw * 1e9 / d.bytes_per_step:.1f} steps/s; "
                     f"each repetition at {100 * statistics.median(fractions):.0f}% of its own bound "
                     f"(median; {100 * min(fractions):.0f}-{100 * max(fractions):.0f}%)")
        elif bandwidth.get(d.threads):
            bw = bandwidth[d.threads]
            bound = bw * 1e9 / d.bytes_per_step
            line += f"; machine {bw:.1f} GB/s -> bound {bound:.1f} steps/s, at {100 * d.gbps / bw:.0f}%"
        lines.append(line)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``bitnet bench`` with parsed ``args``; print the table; return the exit code."""
    from .. import _core
    from .._progress import enabled

    # Default: the library's own thread count (the CPUs this process may use: affinity mask and
    # cgroup quota), not os.cpu_count(), which counts every CPU of the host.
    threads_list = _int_list(args.threads, "-t", 1) if args.threads else [int(_core._usable_cpus())]
    batches = _int_list(args.batch, "--batch", 1)
    depth = getattr(args, "depth", 0)
    for name, v, lo in (("-p", args.n_prompt, 0), ("-n", args.n_gen, 0), ("-r", args.reps, 1), ("-d", depth, 0)):
        if v < lo:
            raise SystemExit(f"bitnet bench: {name} must be >= {lo}")
    head = args.head or ("fast" if args.fast_head else "exact")
    heads = [False, True] if head == "both" else [head == "fast"]

    print(f"CPU: {platform.processor() or platform.machine()}; features: {cpu_features()}; "
          f"kernels available: {', '.join(_core.available_kernels())}; threads: {','.join(map(str, threads_list))}")
    results: List[BenchResult] = []
    decode: List[DecodeInfo] = []
    bandwidth = {}
    peer_error = None   # llama.cpp failed (e.g. cannot load the file): bitnet's results still print
    for threads in threads_list:
        for fast in heads:
            results += bench_bitnet(args.model, args.n_prompt, args.n_gen, threads, args.reps, batches, fast,
                                    device=getattr(args, "device", None), decode=decode,
                                    progress=enabled(getattr(args, "progress", False)), depth=depth,
                                    bandwidth=args.bandwidth)
        if args.vs == "llama.cpp" and peer_error is None:
            try:
                results += bench_llama_cpp(args.model, args.n_prompt, args.n_gen, threads, args.reps, depth)
            except (ValueError, RuntimeError, OSError) as e:
                peer_error = e
        if args.bandwidth:
            bandwidth[threads] = machine_read_bandwidth(1 << 30, threads, 3)
    print(format_table(args.model, results))
    if decode:
        print(_decode_report(decode, bandwidth))
    for threads, bw in bandwidth.items():
        print(f"machine read bandwidth ({threads} threads, best load width, huge pages): {bw:.1f} GB/s")
    if peer_error is not None:
        print(f"bitnet: error: --vs llama.cpp: llama.cpp could not run {args.model} ({peer_error}); "
              "bitnet's results above are complete, without the llama.cpp rows and ratios", file=sys.stderr)
        return 2
    return 0
