"""Speed and memory measurements on the device (the simulator by default, or a card).

Two tools share one timing routine (:func:`~bitnet.benchmark.timing.measure_generation`):

* ``bitnet bench`` (:mod:`bitnet.benchmark.bench`): a llama-bench-style pp/tg table,
  optionally against llama.cpp on the same file.
* ``python -m bitnet.benchmark`` (:mod:`bitnet.benchmark.suite`,
  :mod:`bitnet.benchmark.report`): latency percentiles, throughput per batch size and memory,
  written as JSON, CSV or Markdown (fields: docs/BENCHMARK.md).

>>> from bitnet.benchmark import BenchmarkConfig, BenchmarkRunner, ReportGenerator
>>> report = BenchmarkRunner(BenchmarkConfig("model.gguf", types="latency")).run()  # doctest: +SKIP
>>> ReportGenerator(report).save("latency.json")                                    # doctest: +SKIP
"""
from __future__ import annotations

from .bench import BenchResult, add_arguments, bench_bitnet, bench_llama_cpp, cpu_features, format_table, main
from .report import ReportGenerator
from .suite import (
    BenchmarkConfig,
    BenchmarkReport,
    BenchmarkRunner,
    Environment,
    LatencyResult,
    MemoryResult,
    Stats,
    ThroughputResult,
)
from .timing import GenerationTiming, measure_generation

__all__ = [
    # the suite
    "BenchmarkConfig",
    "BenchmarkReport",
    "BenchmarkRunner",
    "Environment",
    "LatencyResult",
    "MemoryResult",
    "ReportGenerator",
    "Stats",
    "ThroughputResult",
    # shared timing
    "GenerationTiming",
    "measure_generation",
    # `bitnet bench` (main/add_arguments are its CLI entry points, used by bitnet.cli)
    "BenchResult",
    "add_arguments",
    "bench_bitnet",
    "bench_llama_cpp",
    "cpu_features",
    "format_table",
    "main",
]
