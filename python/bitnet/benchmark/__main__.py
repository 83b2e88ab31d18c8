"""``python -m bitnet.benchmark``: the benchmark suite's command line.

    python -m bitnet.benchmark --model M --type latency|throughput|memory|all \
        --iterations N --warmup N --batch-sizes 1,8,16 --format json|csv|markdown --output F

Without ``--output`` the report goes to stdout. Errors are one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

from .report import FORMATS, ReportGenerator
from .suite import BenchmarkConfig, BenchmarkRunner

__all__ = ["main"]

_PROG = "python -m bitnet.benchmark"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:   # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_PROG, description="Latency, throughput and memory benchmarks of a BitNet b1.58 model "
                                        "on the device (fields: docs/BENCHMARK.md).")
    p.add_argument("--model", "-m", help="GGUF model file (required)")
    p.add_argument("--type", default="all",
                   help="latency, throughput, memory, a comma-separated list of them, or all (default)")
    p.add_argument("--iterations", type=int, default=10, help="measured repetitions of each test (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured repetitions first (default 2)")
    p.add_argument("--batch-sizes", default="1,8,16", help="throughput batch sizes (default 1,8,16)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per request (default 32)")
    p.add_argument("--gen-len", type=int, default=32, help="generated tokens per request, >= 2 (default 32)")
    p.add_argument("--device", default=None, help="sim, sim+ioctl or /dev/bitnetN (default: auto)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="simulator host threads (default: the CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--bandwidth-mib", type=int, default=256, help="buffer of the read-bandwidth probe (MiB)")
    p.add_argument("--format", "-f", default=None, choices=[*FORMATS, "md"],
                   help="report format (default: from the --output extension, else json)")
    p.add_argument("--output", "-o", default=None, help="report file (default: stdout)")
    return p


def _as_option(msg: str) -> str:
    """``"batch_sizes: ..."`` (BenchmarkConfig names its argument first) -> ``"--batch-sizes: ..."``."""
    head, sep, rest = msg.partition(": ")
    names = head.split(" + ")
    fields = {"model", "device", "type", "iterations", "warmup", "batch_sizes", "prompt_len", "gen_len", "threads",
              "seed", "bandwidth_mib"}
    if not sep or not all(n in fields for n in names):
        return msg
    return " + ".join("--" + n.replace("_", "-") for n in names) + sep + rest


def main(argv: Optional[List[str]] = None) -> int:
    """Run the suite with command-line ``argv``; return the exit code."""
    from ..errors import BitNetError

    p = _parser()
    a = p.parse_args(argv)
    if a.model is None:
        p.error("--model: a model file is required")
    try:
        cfg = BenchmarkConfig(model=a.model, device=a.device, types=a.type, iterations=a.iterations,
                              warmup=a.warmup, batch_sizes=a.batch_sizes, prompt_len=a.prompt_len,
                              gen_len=a.gen_len, threads=a.threads, seed=a.seed, bandwidth_mib=a.bandwidth_mib)
        report = BenchmarkRunner(cfg).run()
        gen = ReportGenerator(report)
        if a.output is None:
            sys.stdout.write(gen.render(a.format or "json").rstrip("\n") + "\n")
        else:
            gen.save(a.output, a.format)
            print(f"wrote {a.output}", file=sys.stderr)
    except (ValueError, BitNetError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{_PROG}: error: {_as_option(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
