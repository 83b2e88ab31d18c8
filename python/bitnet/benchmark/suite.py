"""The benchmark suite: latency percentiles, throughput per batch size, and memory, measured
on the device (the simulator by default, or a card).

:class:`BenchmarkConfig` says what to run, :class:`BenchmarkRunner` runs it and returns a
:class:`BenchmarkReport`, and :class:`~bitnet.benchmark.report.ReportGenerator` writes that
as JSON, CSV or Markdown. Every field of the result classes carries its unit and meaning in
its metadata; docs/BENCHMARK.md is the same list in prose, and the tests hold the two
together. All speeds come from :func:`~bitnet.benchmark.timing.measure_generation`, the
routine behind ``bitnet bench``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .timing import GenerationTiming, machine_read_bandwidth, measure_generation

if TYPE_CHECKING:   # pragma: no cover
    from ..core import BitNet

__all__ = [
    "BENCHMARK_TYPES",
    "BenchmarkConfig",
    "BenchmarkReport",
    "BenchmarkRunner",
    "Environment",
    "LatencyResult",
    "MemoryResult",
    "SCHEMA",
    "Stats",
    "ThroughputResult",
    "parse_batch_sizes",
]

#: Identifies the report layout; bumped when a field changes meaning or is removed.
SCHEMA = "bitnet.benchmark/1"
#: The benchmark types, in the order :meth:`BenchmarkRunner.run` runs them.
BENCHMARK_TYPES = ("latency", "throughput", "memory")
_MAX_BATCH = 1024


def _f(unit: str, doc: str, json_only: bool = False, **kw: Any) -> Any:
    """A dataclass field documented with its unit (the report generators read both).

    ``json_only`` fields (raw sample lists) appear in JSON reports only.
    """
    return field(metadata={"unit": unit, "doc": doc, "json_only": json_only}, **kw)


# ---------------------------------------------------------------------------- configuration
def parse_batch_sizes(value: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """``"1,8,16"`` or ``[1, 8, 16]`` -> ``(1, 8, 16)``; ValueError naming ``batch_sizes`` otherwise."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(f"batch_sizes: {value!r} is not a comma-separated list of positive integers")
        sizes = [int(p) for p in parts]
    else:
        try:
            sizes = list(value)
        except TypeError:
            raise ValueError(f"batch_sizes: expected a list of positive integers, got {value!r}") from None
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in sizes):
            raise ValueError(f"batch_sizes: expected a list of positive integers, got {value!r}")
        sizes = [int(b) for b in sizes]
    if not sizes:
        raise ValueError("batch_sizes: give at least one batch size")
    bad = [b for b in sizes if not 1 <= b <= _MAX_BATCH]
    if bad:
        raise ValueError(f"batch_sizes: each must be between 1 and {_MAX_BATCH}, got {bad[0]}")
    return tuple(dict.fromkeys(sizes))   # drop repeats, keep order


def _parse_types(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out: List[str] = []
    for t in items:
        t = str(t).strip()
        if t == "all":
            out.extend(BENCHMARK_TYPES)
        elif t in BENCHMARK_TYPES:
            out.append(t)
        else:
            raise ValueError(f"type: unknown benchmark type {t!r}; choose from {', '.join(BENCHMARK_TYPES)} or all")
    if not out:
        raise ValueError("type: give at least one benchmark type")
    return tuple(t for t in BENCHMARK_TYPES if t in out)


def _check_int(name: str, value: Any, lo: int, hi: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}: must be between {lo} and {hi}, got {value}")
    return int(value)


@dataclass
class BenchmarkConfig:
    """What the suite runs. Validated on construction: a bad value raises ValueError naming it.

    Parameters
    ----------
    model : str
        GGUF model file.
    device : str, optional
        ``"sim"``, ``"sim+ioctl"`` or ``"/dev/bitnetN"``; ``None`` is :func:`bitnet.default_device`.
    types : str or sequence of str
        ``"latency"``, ``"throughput"``, ``"memory"``, a comma-separated list of them, or ``"all"``.
    iterations : int
        Measured repetitions of each test (>= 1).
    warmup : int
        Unmeasured repetitions run first (>= 0).
    batch_sizes : str or sequence of int
        Batch sizes of the throughput test (``"1,8,16"``).
    prompt_len, gen_len : int
        Prompt tokens per request (>= 1) and tokens generated per request (>= 2, so that there
        is a decode step to time).
    threads : int, optional
        Host threads of the simulator (``None``: ``$BITNET_NUM_THREADS`` or the CPUs this process may use).
    seed : int
        Seed of the random prompts.
    bandwidth_mib : int
        Buffer size of the machine read-bandwidth probe of the memory test (MiB, >= 1).
    """

    model: str
    device: Optional[str] = None
    types: Union[str, Sequence[str]] = BENCHMARK_TYPES
    iterations: int = 10
    warmup: int = 2
    batch_sizes: Union[str, Sequence[int]] = (1, 8, 16)
    prompt_len: int = 32
    gen_len: int = 32
    threads: Optional[int] = None
    seed: int = 0
    bandwidth_mib: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)):
            raise ValueError(f"model: expected a path, got {self.model!r}")
        self.model = os.fspath(self.model)
        if not os.path.isfile(self.model):
            raise ValueError(f"model: no such file: {self.model}")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"device: expected a string such as 'sim', got {self.device!r}")
        self.types = _parse_types(self.types)
        self.iterations = _check_int("iterations", self.iterations, 1, 1_000_000)
        self.warmup = _check_int("warmup", self.warmup, 0, 1_000_000)
        self.batch_sizes = parse_batch_sizes(self.batch_sizes)
        self.prompt_len = _check_int("prompt_len", self.prompt_len, 1)
        self.gen_len = _check_int("gen_len", self.gen_len, 2)
        if self.threads is not None:
            self.threads = _check_int("threads", self.threads, 1, 1024)
        self.seed = _check_int("seed", self.seed, 0, 2**63 - 1)
        self.bandwidth_mib = _check_int("bandwidth_mib", self.bandwidth_mib, 1, 1 << 20)


# ---------------------------------------------------------------------------- results
@dataclass
class Stats:
    """Summary of repeated measurements. Percentiles interpolate linearly between the sorted
    samples (numpy's default); ``std`` is the sample standard deviation (0 for one sample)."""

    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        """The statistics of ``values`` (all NaN when there are none)."""
        v = [float(x) for x in values if x == x]   # drop NaN
        if not v:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, nan, nan)
        p50, p95, p99 = (float(x) for x in np.percentile(v, [50, 95, 99]))
        return cls(statistics.fmean(v), p50, p95, p99, min(v), max(v), statistics.stdev(v) if len(v) > 1 else 0.0)


STAT_NAMES = tuple(f.name for f in dataclasses.fields(Stats))


@dataclass
class LatencyResult:
    """Per-request latency of one prompt at batch 1, repeated ``iterations`` times."""

    batch_size: int = _f("rows", "sequences per request (always 1 here)")
    prompt_tokens: int = _f("tokens", "prompt length of the request")
    generated_tokens: int = _f("tokens", "tokens generated per request")
    iterations: int = _f("count", "measured requests")
    warmup: int = _f("count", "unmeasured requests run first")
    request_latency_ms: Stats = _f("ms", "submit to last token of one request (prefill + every decode step)")
    time_to_first_token_ms: Stats = _f("ms", "submit to the first generated token (the prompt's forward pass)")
    decode_token_latency_ms: Stats = _f("ms", "time between consecutive generated tokens, over every decode step "
                                              "of every measured request")
    decode_tokens_per_s: Stats = _f("tokens/s", "(generated_tokens - 1) / (last token - first token), per request")
    request_latency_samples_ms: List[float] = _f("ms", "each measured request's latency, in order (JSON only)",
                                                 json_only=True, default_factory=list)


@dataclass
class ThroughputResult:
    """Tokens/s at one batch size: ``batch_size`` prompts submitted as one job, all rows
    advancing together (one forward pass per step for the whole batch)."""

    batch_size: int = _f("rows", "sequences per job")
    prompt_tokens: int = _f("tokens", "prompt length of each row")
    generated_tokens: int = _f("tokens", "tokens generated by each row")
    iterations: int = _f("count", "measured jobs")
    request_seconds: Stats = _f("s", "submit to last token of the job")
    prompt_tokens_per_s: Stats = _f("tokens/s", "batch_size * prompt_tokens / time to the first token "
                                                "(prompt processing; bitnet bench's pp)")
    generated_tokens_per_s: Stats = _f("tokens/s", "batch_size * generated_tokens / request time "
                                                   "(bitnet bench's tg when prompt_tokens is 1)")
    decode_tokens_per_s: Stats = _f("tokens/s", "batch_size * (generated_tokens - 1) / (last token - first token)")
    card_generated_tokens_per_s: Stats = _f("tokens/s", "batch_size * generated_tokens / the card's time for the "
                                                        "job (card counters: cycle model on sim)")


@dataclass
class MemoryResult:
    """Host memory, card weight memory and memory bandwidth."""

    model_file_bytes: int = _f("bytes", "size of the model file")
    rss_before_load_bytes: int = _f("bytes", "resident set size of this process before the device opened")
    rss_after_load_bytes: int = _f("bytes", "resident set size after the model loaded")
    load_rss_delta_bytes: int = _f("bytes", "rss_after_load_bytes - rss_before_load_bytes")
    peak_rss_bytes: int = _f("bytes", "peak resident set size (VmHWM) over peak_rss_scope, before the bandwidth probe")
    peak_rss_scope: str = _f("", "'run': the peak was reset when the runner opened the device; "
                                 "'process': since the process started (reset not permitted)")
    load_seconds: float = _f("s", "wall time of opening the device and loading the model")
    card_weight_bytes: int = _f("bytes", "card weight memory holding the model (card_info weight_used)")
    card_weight_capacity_bytes: int = _f("bytes", "card weight memory size")
    decode_weight_bytes_per_token: float = _f("bytes", "card weight bytes read per decode step at batch 1 "
                                                       "(weight_bytes_read counter)")
    decode_tokens_per_s: float = _f("tokens/s", "mean batch-1 decode tokens/s of the memory test's requests")
    achieved_decode_bandwidth_gbps: float = _f("GB/s", "decode_weight_bytes_per_token * decode_tokens_per_s / 1e9")
    head_bytes_per_token: int = _f("bytes", "output-head bytes the host reads per decode step (the file's "
                                            "output.weight, or token_embd.weight when tied)")
    total_decode_bandwidth_gbps: float = _f("GB/s", "(decode_weight_bytes_per_token + head_bytes_per_token) * "
                                                    "decode_tokens_per_s / 1e9")
    machine_read_bandwidth_gbps: float = _f("GB/s", "best read bandwidth of a bandwidth_mib buffer with the "
                                                    "device's thread count, best load width (timing.machine_read_bandwidth)")
    bandwidth_utilization: float = _f("fraction", "total_decode_bandwidth_gbps / machine_read_bandwidth_gbps")
    card_decode_tokens_per_s: float = _f("tokens/s", "clock / card cycles per decode step (card counters)")
    card_decode_bandwidth_gbps: float = _f("GB/s", "decode_weight_bytes_per_token * card_decode_tokens_per_s / 1e9")
    card_ddr_gbps: float = _f("GB/s", "the card's weight-memory bandwidth (card_info ddr_gbps)")


@dataclass
class Environment:
    """Where and on what the benchmark ran."""

    timestamp_utc: str = _f("", "when the report was made (ISO 8601)")
    package_version: str = _f("", "bitnet version")
    python_version: str = _f("", "Python version")
    platform: str = _f("", "platform.platform()")
    kernel_release: str = _f("", "operating-system kernel release (platform.release())")
    machine: str = _f("", "CPU architecture (platform.machine())")
    cpu_model: str = _f("", "CPU model name (/proc/cpuinfo)")
    cpu_features: str = _f("", "SIMD features the kernels use, present on this CPU")
    cpu_count: int = _f("count", "logical CPUs (os.cpu_count())")
    threads: int = _f("count", "host threads of the device (card_info n_threads)")
    device: str = _f("", "device string opened")
    transport: str = _f("", "card transport (card_info)")
    simd_kernel: str = _f("", "ternary matmul kernel in use (card_info kernel)")
    board_profile: str = _f("", "board profile of the card's cycle model or the card itself")
    clock_mhz: float = _f("MHz", "card engine clock")
    counters_source: str = _f("", "'cycle model' (simulator) or 'hardware'")
    model_path: str = _f("", "model file")
    model_file_bytes: int = _f("bytes", "size of the model file")
    model_arch: str = _f("", "architecture string in the file")
    num_layers: int = _f("count", "transformer blocks")
    hidden_size: int = _f("count", "model width")
    intermediate_size: int = _f("count", "FFN width")
    num_heads: int = _f("count", "attention heads")
    num_kv_heads: int = _f("count", "key/value heads")
    vocab_size: int = _f("count", "vocabulary size")
    max_seq_len: int = _f("tokens", "context length")
    card_weight_bytes: int = _f("bytes", "card weight memory holding the model")


@dataclass
class BenchmarkReport:
    """Everything one run measured. ``latency``/``memory`` are None and ``throughput`` is
    empty for types that were not run."""

    schema: str
    environment: Environment
    config: BenchmarkConfig
    latency: Optional[LatencyResult] = None
    throughput: List[ThroughputResult] = field(default_factory=list)
    memory: Optional[MemoryResult] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain dicts, lists and numbers (NaN stays NaN; :class:`ReportGenerator` writes null)."""
        d = dataclasses.asdict(self)
        d["config"]["types"] = list(self.config.types)
        d["config"]["batch_sizes"] = list(self.config.batch_sizes)
        return d


# ---------------------------------------------------------------------------- host memory
def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024   # KiB on Linux, bytes on macOS


def current_rss_bytes() -> int:
    """Resident set size now (VmRSS), or the peak where /proc is unavailable."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else _maxrss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM, which :func:`reset_peak_rss` can reset), else ru_maxrss."""
    kib = _proc_status_kib("VmHWM")
    return kib * 1024 if kib is not None else _maxrss_bytes()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _head_bytes(model: str) -> int:
    """Bytes of the output head as stored in the file (the host reads it whole per step)."""
    from .. import _core

    tensors = {t["name"]: t for t in _core.GGUFFile(model).tensors()}
    t = tensors.get("output.weight") or tensors.get("token_embd.weight")
    return int(t["nbytes"]) if t else 0


# ---------------------------------------------------------------------------- the runner
class BenchmarkRunner:
    """Runs the benchmarks of a :class:`BenchmarkConfig` on its device.

    :meth:`run` opens the device once, loads the model, runs every configured type and
    closes the device. :meth:`run_latency`, :meth:`run_throughput` and :meth:`run_memory`
    each do the same for one type. Raises :class:`~bitnet.BitNetError` for device or model
    problems and ValueError (naming the argument) when ``prompt_len + gen_len`` does not fit
    the model's context.
    """

    def __init__(self, config: BenchmarkConfig) -> None:
        if not isinstance(config, BenchmarkConfig):
            raise TypeError(f"config must be a BenchmarkConfig, not {type(config).__name__}")
        self.config = config
        self._bn: Optional["BitNet"] = None
        self._load: Dict[str, Any] = {}

    # ------------------------------------------------------------------ session
    @contextlib.contextmanager
    def _session(self) -> Iterator["BitNet"]:
        if self._bn is not None:   # inside run(): reuse the open device
            yield self._bn
            return
        from ..core import BitNet

        cfg = self.config
        scope = "run" if reset_peak_rss() else "process"
        rss0 = current_rss_bytes()
        t0 = time.perf_counter()
        bn = BitNet(cfg.device, n_threads=cfg.threads)
        try:
            bn.load_weights(cfg.model)
            self._load = dict(rss_before=rss0, rss_after=current_rss_bytes(), seconds=time.perf_counter() - t0,
                              scope=scope)
            ctx = bn.model_config()["max_seq_len"]
            if cfg.prompt_len + cfg.gen_len > ctx:
                raise ValueError(f"prompt_len + gen_len: {cfg.prompt_len} + {cfg.gen_len} exceeds the model's "
                                 f"context of {ctx} tokens")
            self._bn = bn
            yield bn
        finally:
            self._bn = None
            bn.close()

    def _prompts(self, bn: "BitNet", batch: int, salt: int) -> List[np.ndarray]:
        vocab = int(bn.model_config()["vocab_size"])
        rng = np.random.default_rng([self.config.seed, salt, batch])
        return list(rng.integers(0, vocab, size=(batch, self.config.prompt_len), dtype=np.int32))

    def _repeat(self, bn: "BitNet", rows: List[np.ndarray]) -> List[GenerationTiming]:
        cfg = self.config
        out = []
        for i in range(cfg.warmup + cfg.iterations):
            t = measure_generation(bn, rows, cfg.gen_len)
            if t.generated_tokens != cfg.gen_len:   # stop tokens are off and the context was checked
                raise RuntimeError(f"the device generated {t.generated_tokens} tokens, expected {cfg.gen_len}")
            if i >= cfg.warmup:
                out.append(t)
        return out

    # ------------------------------------------------------------------ benchmarks
    def run(self) -> BenchmarkReport:
        """Run every configured type on one device session; return the report."""
        with self._session() as bn:
            latency = self.run_latency() if "latency" in self.config.types else None
            throughput = self.run_throughput() if "throughput" in self.config.types else []
            memory = self.run_memory() if "memory" in self.config.types else None
            env = self.environment(bn)
        return BenchmarkReport(SCHEMA, env, self.config, latency, throughput, memory)

    def run_latency(self) -> LatencyResult:
        """Latency of one fixed prompt at batch 1: request, first token and per-token decode."""
        cfg = self.config
        with self._session() as bn:
            runs = self._repeat(bn, self._prompts(bn, 1, 0))
        return LatencyResult(
            batch_size=1, prompt_tokens=cfg.prompt_len, generated_tokens=cfg.gen_len,
            iterations=cfg.iterations, warmup=cfg.warmup,
            request_latency_ms=Stats.of([t.seconds * 1e3 for t in runs]),
            time_to_first_token_ms=Stats.of([t.first_token_seconds * 1e3 for t in runs]),
            decode_token_latency_ms=Stats.of([d * 1e3 for t in runs for d in t.token_latencies()]),
            decode_tokens_per_s=Stats.of([t.decode_tokens_per_s for t in runs]),
            request_latency_samples_ms=[t.seconds * 1e3 for t in runs],
        )

    def run_throughput(self) -> List[ThroughputResult]:
        """Prompt, generated and decode tokens/s for each batch size."""
        cfg = self.config
        out = []
        with self._session() as bn:
            for b in cfg.batch_sizes:
                runs = self._repeat(bn, self._prompts(bn, b, 1))
                out.append(ThroughputResult(
                    batch_size=b, prompt_tokens=cfg.prompt_len, generated_tokens=cfg.gen_len,
                    iterations=cfg.iterations,
                    request_seconds=Stats.of([t.seconds for t in runs]),
                    prompt_tokens_per_s=Stats.of([t.prompt_tokens_per_s for t in runs]),
                    generated_tokens_per_s=Stats.of([t.generated_tokens_per_s for t in runs]),
                    decode_tokens_per_s=Stats.of([t.decode_tokens_per_s for t in runs]),
                    card_generated_tokens_per_s=Stats.of([t.card_generated_tokens_per_s for t in runs]),
                ))
        return out

    def run_memory(self) -> MemoryResult:
        """Host RSS, card weight memory, and achieved vs available read bandwidth during decode."""
        from .. import _core

        cfg = self.config
        with self._session() as bn:
            card = bn.card_info()
            perf = bn.performance_details()
            rows = self._prompts(bn, 1, 2)
            runs = self._repeat(bn, rows)
            # The decode steps' share of the counters: a job of the same prompt that stops
            # after its first token runs the prefill only; the difference is gen_len - 1 steps.
            prefill = measure_generation(bn, rows, 1)
            steps = cfg.gen_len - 1
            full = runs[-1].counters
            bytes_per_token = (full["weight_bytes_read"] - prefill.counters["weight_bytes_read"]) / steps
            cycles_per_token = (full["total_cycles"] - prefill.counters["total_cycles"]) / steps
            peak = peak_rss_bytes()   # before the probe below allocates its buffer
            machine = machine_read_bandwidth(cfg.bandwidth_mib << 20, int(card["n_threads"]), 3)
            load = self._load
        decode_tps = statistics.fmean([t.decode_tokens_per_s for t in runs])
        achieved = bytes_per_token * decode_tps / 1e9
        head = _head_bytes(cfg.model)
        total = (bytes_per_token + head) * decode_tps / 1e9
        clock_hz = float(perf["clock_mhz"]) * 1e6
        card_tps = clock_hz / cycles_per_token if cycles_per_token > 0 else float("nan")
        return MemoryResult(
            model_file_bytes=os.path.getsize(cfg.model),
            rss_before_load_bytes=int(load["rss_before"]), rss_after_load_bytes=int(load["rss_after"]),
            load_rss_delta_bytes=int(load["rss_after"]) - int(load["rss_before"]),
            peak_rss_bytes=peak, peak_rss_scope=str(load["scope"]), load_seconds=float(load["seconds"]),
            card_weight_bytes=int(card["weight_used"]), card_weight_capacity_bytes=int(card["weight_capacity"]),
            decode_weight_bytes_per_token=float(bytes_per_token), decode_tokens_per_s=float(decode_tps),
            achieved_decode_bandwidth_gbps=float(achieved), head_bytes_per_token=head,
            total_decode_bandwidth_gbps=float(total), machine_read_bandwidth_gbps=machine,
            bandwidth_utilization=total / machine if machine > 0 else float("nan"),
            card_decode_tokens_per_s=float(card_tps),
            card_decode_bandwidth_gbps=float(bytes_per_token * card_tps / 1e9),
            card_ddr_gbps=float(card["ddr_gbps"]),
        )

    def environment(self, bn: "BitNet") -> Environment:
        """The :class:`Environment` of ``bn`` (an open device with the model loaded)."""
        from .. import __version__
        from .bench import cpu_features

        card = bn.card_info()
        cfg = bn.model_config()
        return Environment(
            timestamp_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            package_version=__version__, python_version=platform.python_version(), platform=platform.platform(),
            kernel_release=platform.release(), machine=platform.machine(), cpu_model=_cpu_model(),
            cpu_features=cpu_features(), cpu_count=os.cpu_count() or 1, threads=int(card["n_threads"]),
            device=bn.device, transport=str(card["transport"]), simd_kernel=str(card["kernel"]),
            board_profile=str(card["profile"]), clock_mhz=float(card["clock_mhz"]),
            counters_source=str(card["counters"]), model_path=self.config.model,
            model_file_bytes=os.path.getsize(self.config.model), model_arch=str(cfg["arch"]),
            num_layers=int(cfg["num_layers"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_heads=int(cfg["num_heads"]),
            num_kv_heads=int(cfg["num_kv_heads"]), vocab_size=int(cfg["vocab_size"]),
            max_seq_len=int(cfg["max_seq_len"]), card_weight_bytes=int(card["weight_used"]),
        )
