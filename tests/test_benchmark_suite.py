"""The benchmark suite (`python -m bitnet.benchmark`, BenchmarkRunner, ReportGenerator) on a
tiny model on the simulator: reports in JSON, CSV and Markdown carry the documented fields
and the same numbers; the suite and `bitnet bench` measure the same quantity; bad arguments
are one-line errors. Timings are never asserted (only generous ratios between two tools).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from bitnet import BitNet
from bitnet.benchmark import (
    BenchmarkConfig,
    BenchmarkReport,
    BenchmarkRunner,
    Environment,
    LatencyResult,
    MemoryResult,
    ReportGenerator,
    ThroughputResult,
    bench,
    bench_bitnet,
    suite,
    timing,
)
from bitnet.benchmark.__main__ import main as suite_main
from bitnet.benchmark.report import CSV_COLUMNS
from bitnet.models import make_random_model

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARK.md"
STATS = ("mean", "p50", "p95", "p99", "min", "max", "std")
BATCHES = (1, 3)
PROMPT, GEN = 4, 6


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(make_random_model(tmp_path_factory.mktemp("bench") / "tiny.gguf", preset="tiny"))


@pytest.fixture(scope="module")
def report(model) -> BenchmarkReport:
    cfg = BenchmarkConfig(model, types="all", iterations=3, warmup=1, batch_sizes=",".join(map(str, BATCHES)),
                          prompt_len=PROMPT, gen_len=GEN, bandwidth_mib=8)
    return BenchmarkRunner(cfg).run()


# ---------------------------------------------------------------------------- what is measured
def _check_stats(s, positive: bool = True) -> None:
    vals = [getattr(s, k) for k in STATS]
    assert all(math.isfinite(v) for v in vals), s
    assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max
    assert s.min <= s.mean <= s.max and s.std >= 0
    if positive:
        assert s.min > 0


def test_latency_section(report):
    lat = report.latency
    assert (lat.batch_size, lat.prompt_tokens, lat.generated_tokens, lat.iterations, lat.warmup) == (1, PROMPT, GEN, 3, 1)
    for s in (lat.request_latency_ms, lat.time_to_first_token_ms, lat.decode_token_latency_ms, lat.decode_tokens_per_s):
        _check_stats(s)
    assert len(lat.request_latency_samples_ms) == 3
    assert lat.request_latency_ms.mean == pytest.approx(statistics.fmean(lat.request_latency_samples_ms))
    # The first token comes before the end of the request.
    assert lat.time_to_first_token_ms.min < lat.request_latency_ms.max


def test_throughput_section(report):
    assert [t.batch_size for t in report.throughput] == list(BATCHES)
    for t in report.throughput:
        assert (t.prompt_tokens, t.generated_tokens, t.iterations) == (PROMPT, GEN, 3)
        for s in (t.request_seconds, t.prompt_tokens_per_s, t.generated_tokens_per_s, t.decode_tokens_per_s,
                  t.card_generated_tokens_per_s):
            _check_stats(s)
        # generated tokens/s is batch * gen / request time, request by request.
        assert t.generated_tokens_per_s.max == pytest.approx(t.batch_size * GEN / t.request_seconds.min)


def test_memory_section(report, model):
    mem = report.memory
    with BitNet("sim") as bn:
        bn.load_weights(model)
        card_bytes = bn.card_info()["weight_used"]
    assert mem.model_file_bytes == os.path.getsize(model)
    assert mem.card_weight_bytes == card_bytes > 0
    assert mem.card_weight_capacity_bytes >= card_bytes
    # One decode step streams every ternary matrix of the card once.
    assert mem.decode_weight_bytes_per_token == card_bytes
    assert mem.head_bytes_per_token == 512 * 256 * 2   # tied f16 embedding of the tiny preset
    assert mem.achieved_decode_bandwidth_gbps == pytest.approx(card_bytes * mem.decode_tokens_per_s / 1e9)
    assert mem.total_decode_bandwidth_gbps == pytest.approx(
        (card_bytes + mem.head_bytes_per_token) * mem.decode_tokens_per_s / 1e9)
    assert mem.machine_read_bandwidth_gbps > 0
    assert mem.bandwidth_utilization == pytest.approx(mem.total_decode_bandwidth_gbps / mem.machine_read_bandwidth_gbps)
    assert mem.peak_rss_scope in ("run", "process")
    assert mem.peak_rss_bytes >= max(mem.rss_before_load_bytes, mem.rss_after_load_bytes) > 0
    assert mem.load_rss_delta_bytes == mem.rss_after_load_bytes - mem.rss_before_load_bytes
    assert mem.card_decode_tokens_per_s > 0 and mem.card_ddr_gbps > 0
    # The cycle model cannot stream weights faster than its DDR.
    assert mem.card_decode_bandwidth_gbps <= mem.card_ddr_gbps * 1.0001


def test_environment(report, model):
    env = report.environment
    assert env.device == "sim" and env.transport == "sim" and env.counters_source == "cycle model"
    assert env.model_path == model and env.model_file_bytes == os.path.getsize(model)
    assert (env.num_layers, env.hidden_size, env.vocab_size) == (2, 256, 512)
    assert env.threads >= 1 and env.cpu_count >= 1 and env.package_version and env.kernel_release
    assert env.cpu_features == bench.cpu_features()


def test_single_type_runs(model):
    cfg = BenchmarkConfig(model, types="memory", iterations=1, warmup=0, prompt_len=2, gen_len=3, bandwidth_mib=4)
    rep = BenchmarkRunner(cfg).run()
    assert rep.latency is None and rep.throughput == [] and rep.memory is not None
    gen = ReportGenerator(rep)
    d = json.loads(gen.to_json())
    assert d["latency"] is None and d["throughput"] == []
    assert {r.section for r in gen.records()} == {"memory", "environment", "config"}
    lat = BenchmarkRunner(dataclasses.replace(cfg, types="latency")).run_latency()
    assert lat.iterations == 1 and lat.generated_tokens == 3


# ---------------------------------------------------------------------------- documented fields
def _doc_tables() -> Dict[str, Dict[str, str]]:
    """``### section`` of docs/BENCHMARK.md -> {field: unit} from its table."""
    out: Dict[str, Dict[str, str]] = {}
    section = None
    for line in DOCS.read_text().splitlines():
        if line.startswith("### "):
            section = line[4:].split()[0]
            out[section] = {}
        m = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if m and section:
            out[section][m.group(1)] = m.group(2).strip()
    return out


@pytest.mark.parametrize("section,cls", [("latency", LatencyResult), ("throughput", ThroughputResult),
                                         ("memory", MemoryResult), ("environment", Environment)])
def test_every_field_is_documented_with_its_unit(section, cls):
    doc = _doc_tables()[section]
    fields = {f.name: f.metadata["unit"] for f in dataclasses.fields(cls)}
    assert doc == fields


def test_config_fields_are_documented():
    text = DOCS.read_text().split("### config", 1)[1]
    for f in dataclasses.fields(BenchmarkConfig):
        assert f"`{f.name}`" in text


def test_json_report(report):
    gen = ReportGenerator(report)
    d = json.loads(gen.to_json())   # allow_nan=False on writing: strict JSON
    assert d["schema"] == "bitnet.benchmark/1"
    assert set(d) == {"schema", "environment", "config", "latency", "throughput", "memory", "units"}
    doc = _doc_tables()
    for section in ("latency", "memory", "environment"):
        assert set(d[section]) == set(doc[section])
    for row in d["throughput"]:
        assert set(row) == set(doc["throughput"])
    assert set(d["latency"]["request_latency_ms"]) == set(STATS)
    assert d["config"]["batch_sizes"] == list(BATCHES) and d["config"]["types"] == ["latency", "throughput", "memory"]
    assert d["units"]["latency.request_latency_ms"] == "ms"
    assert d["units"]["memory.achieved_decode_bandwidth_gbps"] == "GB/s"
    assert d["units"]["throughput.decode_tokens_per_s"] == "tokens/s"


def _json_value(d: dict, section: str, name: str, batch: Optional[int], stat: str):
    obj = d[section]
    if section == "throughput":
        obj = next(r for r in obj if r["batch_size"] == batch)
    v = obj[name]
    if stat != "value":
        v = v[stat]
    if isinstance(v, list):
        v = ",".join(map(str, v))
    return v


def _md_tables(text: str) -> List[Tuple[str, List[str], List[List[str]]]]:
    """(``## heading``, header, rows) of every Markdown table; checks the separator row."""
    tables = []
    heading, block = "", []
    for line in text.splitlines() + [""]:
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in block]
            assert all(re.fullmatch(r"-{3,}", c) for c in cells[1]), block[1]
            assert all(len(r) == len(cells[0]) for r in cells), block
            tables.append((heading, cells[0], cells[2:]))
            block = []
    return tables


_MD_SECTIONS = {"Latency": "latency", "Throughput": "throughput", "Memory": "memory", "Environment": "environment",
                "Configuration": "config"}


def _md_records(text: str) -> Dict[tuple, str]:
    out: Dict[tuple, str] = {}
    for heading, header, rows in _md_tables(text):
        section = _MD_SECTIONS[heading]
        for r in rows:
            if header == ["batch_size", "metric", "unit", *STATS]:
                for stat, cell in zip(STATS, r[3:]):
                    out[(section, r[1], int(r[0]), stat)] = cell
            elif header == ["batch_size", "field", "value", "unit"]:
                out[(section, r[1], int(r[0]), "value")] = r[2]
            elif header == ["field", "value", "unit"]:
                out[(section, r[0], None, "value")] = r[1]
            else:
                assert header[0] == "batch"   # the throughput summary (mean ± std)
    return out


def test_csv_and_markdown_hold_the_json_numbers(report):
    gen = ReportGenerator(report)
    d = json.loads(gen.to_json())
    rows = list(csv.reader(io.StringIO(gen.to_csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    md = _md_records(gen.to_markdown())
    seen = set()
    for section, name, batch, stat, value, unit in rows[1:]:
        b = int(batch) if batch else None
        key = (section, name, b, stat)
        assert key not in seen
        seen.add(key)
        assert stat in ("value", *STATS)
        assert unit == d["units"].get(f"{section}.{name}", "")
        want = _json_value(d, section, name, b, stat)
        cell = md[key]
        if want is None:
            assert value == "" and cell == "n/a", key
        elif isinstance(want, bool) or isinstance(want, str):
            assert value == str(want) and cell == str(want).replace("|", "\\|"), key
        elif isinstance(want, int):
            assert int(value) == want and int(cell) == want, key
        else:
            assert float(value) == want, key                              # repr round-trips
            assert math.isclose(float(cell), want, rel_tol=1e-5), key     # 6 significant digits
    assert seen == set(md)
    # Every section and batch size is there.
    assert {k[0] for k in seen} == {"latency", "throughput", "memory", "environment", "config"}
    assert {k[2] for k in seen if k[0] == "throughput"} == set(BATCHES)


def test_save_picks_the_format(report, tmp_path):
    gen = ReportGenerator(report)
    assert json.loads(Path(gen.save(tmp_path / "r.json")).read_text())["schema"] == "bitnet.benchmark/1"
    assert Path(gen.save(tmp_path / "r.csv")).read_text().startswith(",".join(CSV_COLUMNS))
    assert Path(gen.save(tmp_path / "r.md")).read_text().startswith("# bitnet benchmark report")
    assert json.loads(Path(gen.save(tmp_path / "r.txt")).read_text())   # unknown extension: JSON
    assert Path(gen.save(tmp_path / "x.out", format="csv")).read_text() == gen.to_csv()
    with pytest.raises(ValueError, match="^format"):
        gen.save(tmp_path / "r.x", format="xml")


def test_nan_is_null_in_every_format(report):
    rep = dataclasses.replace(report, memory=dataclasses.replace(report.memory, card_decode_tokens_per_s=float("nan")))
    gen = ReportGenerator(rep)
    assert json.loads(gen.to_json())["memory"]["card_decode_tokens_per_s"] is None
    assert "memory,card_decode_tokens_per_s,,value,,tokens/s" in gen.to_csv().splitlines()
    assert "| card_decode_tokens_per_s | n/a | tokens/s |" in gen.to_markdown()


def test_job_token_times(model):
    """The device stamps each token as it publishes it (the suite's clock)."""
    from bitnet import BitNetError

    with BitNet("sim") as bn:
        bn.load_weights(model)
        job = bn._dev.submit([[1, 2, 3], [4, 5, 6]], 5, 0.0, 0, 1.0, 0, [])
        assert job.wait(60_000)
        for seq in (0, 1):
            t = job.token_times(seq)
            assert t.dtype == "float64" and len(t) == len(job.tokens(seq)) == 5
            assert 0 < t[0] and all(a <= b for a, b in zip(t, t[1:])) and t[-1] <= job.seconds
        # Rows of a batch advance together: row 1's token k comes right after row 0's.
        assert all(a <= b for a, b in zip(job.token_times(0), job.token_times(1)))
        with pytest.raises(BitNetError):
            job.token_times(2)


# ---------------------------------------------------------------------------- same as `bitnet bench`
def test_consistent_with_bitnet_bench(model, monkeypatch):
    """`bitnet bench`'s tg and the suite's generated tokens/s are one routine on the same job
    shape; their values agree within a generous factor (timings are noisy)."""
    calls: Dict[str, List[timing.GenerationTiming]] = {"bench": [], "suite": []}

    def spy(tool):
        def wrapped(bn, rows, n_gen):
            t = timing.measure_generation(bn, rows, n_gen)
            calls[tool].append(t)
            return t
        return wrapped

    monkeypatch.setattr(bench, "measure_generation", spy("bench"))
    monkeypatch.setattr(suite, "measure_generation", spy("suite"))
    n_gen, batch, reps = 12, 2, 7
    (tg,) = bench_bitnet(model, 0, n_gen, threads=os.cpu_count() or 1, reps=reps, batch=batch)
    assert tg.test == f"tg{n_gen} x{batch}"
    rep = BenchmarkRunner(BenchmarkConfig(model, types="throughput", iterations=reps, warmup=1, batch_sizes=[batch],
                                          prompt_len=1, gen_len=n_gen)).run()
    (row,) = rep.throughput
    # The same job shape, timed by the same routine, reduced by the same formula.
    shapes = {(t.batch, t.prompt_tokens, t.generated_tokens) for t in calls["bench"] + calls["suite"]}
    assert shapes == {(batch, 1, n_gen)}
    assert tg.samples == [t.generated_tokens_per_s for t in calls["bench"][1:]]
    suite_samples = [t.generated_tokens_per_s for t in calls["suite"][1:]]
    assert row.generated_tokens_per_s.mean == pytest.approx(statistics.fmean(suite_samples))
    # Measured values: same magnitude. Generous, and on the best repetition of each, the
    # figure that noise on a shared machine disturbs least (noise only ever slows a run).
    ratio = max(tg.samples) / row.generated_tokens_per_s.max
    assert 0.1 < ratio < 10, (tg.samples, suite_samples)


def test_bench_pp_is_prompt_tokens_per_s(model, monkeypatch):
    seen: List[timing.GenerationTiming] = []

    def wrapped(bn, rows, n_gen):
        t = timing.measure_generation(bn, rows, n_gen)
        seen.append(t)
        return t

    monkeypatch.setattr(bench, "measure_generation", wrapped)
    (pp,) = bench_bitnet(model, 8, 0, threads=1, reps=2)
    assert pp.test == "pp8"
    assert [(t.batch, t.prompt_tokens, t.generated_tokens) for t in seen] == [(1, 8, 1)] * 3
    assert pp.samples == [t.prompt_tokens_per_s for t in seen[1:]]


# ---------------------------------------------------------------------------- the command lines
def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ))


def test_cli_writes_each_format(model, tmp_path):
    out = tmp_path / "report.json"
    r = _run("-m", "bitnet.benchmark", "--model", model, "--type", "latency,throughput", "--iterations", "2",
             "--warmup", "0", "--batch-sizes", "1,2", "--prompt-len", "2", "--gen-len", "3", "--format", "json",
             "--output", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["latency"]["iterations"] == 2 and [t["batch_size"] for t in d["throughput"]] == [1, 2]
    assert d["memory"] is None


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_cli_stdout(model, fmt, capsys):
    rc = suite_main(["--model", model, "--type", "latency", "--iterations", "1", "--warmup", "0", "--prompt-len", "2",
                     "--gen-len", "2", "--format", fmt])
    out = capsys.readouterr().out
    assert rc == 0
    if fmt == "csv":
        assert next(csv.reader(io.StringIO(out))) == list(CSV_COLUMNS)
    else:
        assert out.startswith("# bitnet benchmark report") and "## Latency" in out


@pytest.mark.parametrize("args,option", [
    (["--type", "speed"], "--type"),
    (["--iterations", "0"], "--iterations"),
    (["--warmup", "-1"], "--warmup"),
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--gen-len", "1"], "--gen-len"),
    (["--prompt-len", "500", "--gen-len", "20"], "--prompt-len + --gen-len"),
    (["--iterations", "x"], "--iterations"),
    (["--format", "xml"], "--format"),
])
def test_cli_bad_arguments_are_one_line(model, args, option, capsys):
    argv = ["--model", model, *args] if "--type" in args else ["--model", model, "--type", "latency", *args]
    assert _main_rc(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m bitnet.benchmark: error: "), err
    assert option in err


def _main_rc(argv: List[str]) -> int:
    """The suite's exit code, whether argparse exits or main returns."""
    try:
        return suite_main(argv)
    except SystemExit as e:
        return int(e.code)


def test_cli_missing_and_bad_model(tmp_path, capsys):
    assert _main_rc(["--model", str(tmp_path / "nope.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model: no such file" in err
    assert _main_rc([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    assert suite_main(["--model", str(bad), "--type", "latency", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("kw,name", [
    (dict(types="nope"), "type"), (dict(types=[]), "type"), (dict(iterations=0), "iterations"),
    (dict(iterations=1.5), "iterations"), (dict(warmup=-1), "warmup"), (dict(batch_sizes="1,x"), "batch_sizes"),
    (dict(batch_sizes=[]), "batch_sizes"), (dict(batch_sizes=[1, 0]), "batch_sizes"),
    (dict(batch_sizes=[True]), "batch_sizes"), (dict(prompt_len=0), "prompt_len"), (dict(gen_len=1), "gen_len"),
    (dict(threads=0), "threads"), (dict(seed=-1), "seed"), (dict(bandwidth_mib=0), "bandwidth_mib"),
    (dict(device=3), "device"),
])
def test_config_errors_name_the_argument(model, kw, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        BenchmarkConfig(model, **kw)


def test_config_normalises(model, tmp_path):
    cfg = BenchmarkConfig(Path(model), types="memory,latency", batch_sizes="8, 1,8")
    assert cfg.model == model and cfg.types == ("latency", "memory") and cfg.batch_sizes == (8, 1)
    assert BenchmarkConfig(model, types="all").types == ("latency", "throughput", "memory")
    with pytest.raises(ValueError, match="^model: no such file"):
        BenchmarkConfig(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match=r"^prompt_len \+ gen_len: "):
        BenchmarkRunner(BenchmarkConfig(model, prompt_len=510, gen_len=3)).run_latency()


def test_bitnet_bench_still_works(model):
    r = _run("-m", "bitnet", "bench", "-m", model, "-p", "4", "-n", "4", "-r", "1", "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert "| pp4 |" in r.stdout and "| tg4 x2 |" in r.stdout and "kernel" in r.stdout


def test_bitnet_bench_lists_heads_and_bandwidth(model):
    # One run: two thread counts, two batch sizes, both heads, the decode-bandwidth report.
    r = _run("-m", "bitnet", "bench", "-m", model, "-p", "4", "-n", "4", "-r", "1", "-t", "1,2",
             "--batch", "1,2", "--head", "both", "--bandwidth")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| tiny.gguf")]
    assert len(rows) == 2 * 2 * 3                       # threads x heads x (pp, tg, tg x2)
    assert sum("fast head" in line for line in rows) == 6
    decode = [line for line in r.stdout.splitlines() if line.startswith("  tg4")]
    assert len(decode) == 8 and all("MB/step" in d and "peak RSS" in d and "bound" in d for d in decode)
    assert r.stdout.count("machine read bandwidth") == 2
    if suite.reset_peak_rss():   # the bandwidth is sampled next to each repetition where the peak RSS can be reset
        assert all("measured right before and after each of the 1 repetitions" in d and "of its own bound" in d
                   for d in decode)


def test_decode_report_against_adjacent_bandwidth():
    # Each repetition is held against the bandwidth measured next to it, not a sample from another minute.
    d = bench.DecodeInfo(test="tg4", threads=2, fast_head=False, batch=1, weight_bytes=500_000_000,
                         head_bytes=500_000_000, step_seconds=0.04, peak_rss_bytes=2**30, file_bytes=2**30,
                         rep_step_seconds=[0.04, 0.05, 0.04], rep_bandwidth_gbps=[25.0, 25.0, 50.0])
    assert d.rep_fractions == pytest.approx([1.0, 0.8, 0.5])
    text = bench._decode_report([d], {2: 99.0})
    assert "machine 25.0 GB/s (median; 25.0-50.0" in text              # the adjacent samples, not 99
    assert "each repetition at 80% of its own bound (median; 50-100%)" in text
    plain = bench._decode_report([bench.DecodeInfo(**{**d.__dict__, "rep_bandwidth_gbps": []})], {2: 50.0})
    assert "machine 50.0 GB/s" in plain and "at 50%" in plain and "each repetition" not in plain


@pytest.mark.parametrize("args, msg", [(["-t", "1,x"], "-t must be"), (["--batch", "0"], "--batch values"),
                                       (["--head", "fastest"], "invalid choice")])
def test_bitnet_bench_bad_lists(model, args, msg):
    r = _run("-m", "bitnet", "bench", "-m", model, "-p", "4", "-n", "4", "-r", "1", *args)
    assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr


def test_bench_vs_llama_cpp_failure_keeps_bitnet_results(model, monkeypatch, capsys):
    """llama.cpp failing on the file (it refuses some files ours loads) must not lose the minutes
    of bitnet measurements before it: the table prints, the reason goes to stderr, exit 2."""
    from bitnet.cli import main

    def refuse(*a, **k):
        raise ValueError(f"Failed to load model from file: {model}")

    monkeypatch.setattr(bench, "bench_llama_cpp", refuse)
    rc = main(["bench", "-m", model, "-p", "4", "-n", "2", "-r", "1", "-t", "1", "--vs", "llama.cpp", "-q"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "| bitnet | 1 | pp4 |" in out and "| bitnet | 1 | tg2 |" in out and "llama.cpp |" not in out
    assert "llama.cpp could not run" in err and "Failed to load model from file" in err


def test_bitnet_bench_depth_runs_after_a_context(model, monkeypatch):
    """-d D: pp is the difference of two prompts' times to the first token (D + N and D
    tokens), tg the N decode steps after a D-token prompt; names as llama-bench's."""
    calls: List[Tuple[int, int, int]] = []

    def spy(bn, rows, n_gen):
        t = timing.measure_generation(bn, rows, n_gen)
        calls.append((t.batch, t.prompt_tokens, t.generated_tokens))
        return t

    monkeypatch.setattr(bench, "measure_generation", spy)
    decode: List[bench.DecodeInfo] = []
    pp, tg1, tg2 = bench_bitnet(model, 4, 3, threads=1, reps=1, batch=[1, 2], decode=decode, depth=8)
    assert (pp.test, tg1.test, tg2.test) == ("pp4 @ d8", "tg3 @ d8", "tg3 @ d8 x2")
    assert calls == [(1, 12, 1), (1, 8, 1)] * 2 + [(1, 8, 4)] * 2 + [(2, 8, 4)] * 2
    assert all(math.isfinite(x) and x > 0 for r in (tg1, tg2) for x in r.samples)
    # The KV cache read per step is counted: 2 (K, V) x 4 bytes x layers x kv heads x head_dim
    # per position, over 8 + 3 / 2 positions on average, for every sequence of the batch.
    with BitNet("sim") as bn:
        bn.load_weights(model)
        cfg = bn.model_config()
    per_pos = 8 * cfg["num_layers"] * cfg["num_kv_heads"] * cfg["head_dim"]
    assert [d.kv_bytes for d in decode] == [int(per_pos * 9.5), 2 * int(per_pos * 9.5)]


def test_bench_ratio_pairs_tests_of_the_same_depth():
    rows = [bench.BenchResult("bitnet", "pp4 @ d8", 1, [30.0]), bench.BenchResult("bitnet", "pp4", 1, [40.0]),
            bench.BenchResult("llama.cpp", "pp4 @ d8", 1, [10.0])]
    table = bench.format_table(__file__, rows)
    assert "bitnet / llama.cpp pp4 @ d8 (1 threads): 3.00x" in table
    assert "pp4 (1 threads)" not in table


def test_bitnet_bench_depth_cli(model):
    r = _run("-m", "bitnet", "bench", "-m", model, "-p", "2", "-n", "2", "-r", "1", "-d", "5", "--bandwidth")
    assert r.returncode == 0, r.stderr
    assert "| pp2 @ d5 |" in r.stdout and "| tg2 @ d5 |" in r.stdout and "KV cache" in r.stdout
    bad = _run("-m", "bitnet", "bench", "-m", model, "-p", "2", "-n", "2", "-r", "1", "-d", "-1")
    assert bad.returncode != 0 and "-d must be >= 0" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_bench_default_threads_are_the_usable_cpus(model):
    """Without -t, `bitnet bench` runs the library's default thread count (the CPUs this
    process may use), not os.cpu_count(): under a one-CPU affinity mask, one thread."""
    code = ("import os, sys\nos.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from bitnet.cli import main\nsys.exit(main(['bench', '-m', sys.argv[1], '-p', '4', '-n', '2', '-r', '1']))\n")
    env = {k: v for k, v in os.environ.items() if k != "BITNET_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| tiny.gguf")]
    assert rows and all(r[4].strip() == "1" for r in rows), out.stdout
