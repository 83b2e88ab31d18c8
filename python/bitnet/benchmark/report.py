"""Benchmark reports as JSON, CSV and Markdown.

All three are written from the same :class:`~bitnet.benchmark.suite.BenchmarkReport`:
JSON is the report's nested structure; CSV and Markdown are built from
:meth:`ReportGenerator.records`, one record per number (section, name, batch size, statistic,
value, unit), so every number appears in every format. Units and meanings are those of the
result classes' field metadata and of docs/BENCHMARK.md.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Union

from .suite import STAT_NAMES, BenchmarkConfig, BenchmarkReport, Stats

__all__ = ["CSV_COLUMNS", "FORMATS", "Record", "ReportGenerator"]

#: Output formats of :meth:`ReportGenerator.render` and :meth:`ReportGenerator.save`.
FORMATS = ("json", "csv", "markdown")
#: Header row of the CSV report.
CSV_COLUMNS = ("section", "name", "batch_size", "statistic", "value", "unit")

_CONFIG_UNITS = {"iterations": "count", "warmup": "count", "batch_sizes": "rows", "prompt_len": "tokens",
                 "gen_len": "tokens", "threads": "count", "bandwidth_mib": "MiB"}
_EXT = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown"}

Value = Union[int, float, str, None]


@dataclass(frozen=True)
class Record:
    """One number (or string) of a report."""

    section: str                 # environment, config, latency, throughput or memory
    name: str                    # field name
    batch_size: Optional[int]    # for latency and throughput; None elsewhere
    statistic: str               # "value", or mean/p50/p95/p99/min/max/std of a repeated measurement
    value: Value
    unit: str


def _finite(v: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _config_value(v: Any) -> Value:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return v


def _result_records(section: str, obj: Any, batch: Optional[int]) -> Iterable[Record]:
    for f in dataclasses.fields(obj):
        if f.metadata.get("json_only"):
            continue
        v = getattr(obj, f.name)
        unit = f.metadata.get("unit", "")
        if isinstance(v, Stats):
            for s in STAT_NAMES:
                yield Record(section, f.name, batch, s, _finite(getattr(v, s)), unit)
        else:
            yield Record(section, f.name, batch, "value", _finite(v), unit)


def _md(v: Value) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("|", "\\|")


def _mean_std(s: Stats) -> str:
    return f"{_md(_finite(s.mean))} ± {_md(_finite(s.std))}"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


class ReportGenerator:
    """Writes a :class:`BenchmarkReport` as JSON, CSV or Markdown.

    >>> gen = ReportGenerator(BenchmarkRunner(BenchmarkConfig("m.gguf")).run())   # doctest: +SKIP
    >>> gen.save("report.md")                                                      # doctest: +SKIP
    """

    def __init__(self, report: BenchmarkReport) -> None:
        if not isinstance(report, BenchmarkReport):
            raise TypeError(f"report must be a BenchmarkReport, not {type(report).__name__}")
        self.report = report

    # ------------------------------------------------------------------ records
    def records(self) -> List[Record]:
        """Every number of the report (raw sample lists excepted), in report order."""
        r = self.report
        out: List[Record] = []
        if r.latency is not None:
            out += _result_records("latency", r.latency, r.latency.batch_size)
        for t in r.throughput:
            out += _result_records("throughput", t, t.batch_size)
        if r.memory is not None:
            out += _result_records("memory", r.memory, None)
        out += _result_records("environment", r.environment, None)
        for f in dataclasses.fields(BenchmarkConfig):
            out.append(Record("config", f.name, None, "value", _config_value(getattr(r.config, f.name)),
                              _CONFIG_UNITS.get(f.name, "")))
        return out

    def units(self) -> Dict[str, str]:
        """``"section.name" -> unit`` for every field with a unit."""
        return {f"{rec.section}.{rec.name}": rec.unit for rec in self.records() if rec.unit}

    # ------------------------------------------------------------------ formats
    def to_json(self, indent: Optional[int] = 2) -> str:
        """The report as JSON: ``schema``, ``environment``, ``config``, ``latency`` (or null),
        ``throughput`` (a list), ``memory`` (or null), and ``units``. NaN is written as null."""
        d = _finite(self.report.to_dict())
        d["units"] = self.units()
        return json.dumps(d, indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """One row per record under the header :data:`CSV_COLUMNS`; empty cells for None/NaN."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for rec in self.records():
            w.writerow([rec.section, rec.name, "" if rec.batch_size is None else rec.batch_size, rec.statistic,
                        "" if rec.value is None else rec.value, rec.unit])
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Readable tables: a throughput summary, then every record of each section.

        Floats have six significant digits; missing values read ``n/a``.
        """
        r = self.report
        env = r.environment
        lines = [
            "# bitnet benchmark report",
            "",
            f"`{os.path.basename(env.model_path)}` on device `{env.device}` ({env.simd_kernel} kernel, "
            f"{env.threads} threads, {env.counters_source} counters), {env.timestamp_utc}. "
            f"Schema `{r.schema}`; fields and units: docs/BENCHMARK.md.",
            "",
        ]
        recs = self.records()
        stats_header = ["batch_size", "metric", "unit", *STAT_NAMES]
        if r.latency is not None:
            lat = r.latency
            lines += ["## Latency", "",
                      f"Batch 1, {lat.prompt_tokens}-token prompt, {lat.generated_tokens} generated tokens; "
                      f"{lat.iterations} requests after {lat.warmup} warm-up.", ""]
            lines += self._section_tables("latency", recs, stats_header)
        if r.throughput:
            lines += ["## Throughput", "",
                      "Each batch is one job: every row advances one token per forward pass. Mean ± std.", ""]
            summary = [[str(t.batch_size), _mean_std(t.prompt_tokens_per_s), _mean_std(t.generated_tokens_per_s),
                        _mean_std(t.decode_tokens_per_s), _mean_std(t.request_seconds)] for t in r.throughput]
            lines += _table(["batch", "prompt tokens/s", "generated tokens/s", "decode tokens/s", "request s"],
                            summary)
            lines += self._section_tables("throughput", recs, stats_header)
        for section, title in (("memory", "Memory"), ("environment", "Environment"), ("config", "Configuration")):
            rows = [[rec.name, _md(rec.value), rec.unit] for rec in recs if rec.section == section]
            if rows:
                lines += [f"## {title}", ""] + _table(["field", "value", "unit"], rows)
        return "\n".join(lines)

    @staticmethod
    def _section_tables(section: str, recs: List[Record], stats_header: List[str]) -> List[str]:
        scalars = [[str(rec.batch_size), rec.name, _md(rec.value), rec.unit]
                   for rec in recs if rec.section == section and rec.statistic == "value"]
        by_metric: Dict[tuple, Dict[str, Value]] = {}
        units: Dict[tuple, str] = {}
        for rec in recs:
            if rec.section == section and rec.statistic != "value":
                by_metric.setdefault((rec.batch_size, rec.name), {})[rec.statistic] = rec.value
                units[(rec.batch_size, rec.name)] = rec.unit
        stats = [[str(b), name, units[(b, name)], *(_md(vals.get(s)) for s in STAT_NAMES)]
                 for (b, name), vals in by_metric.items()]
        return _table(stats_header, stats) + _table(["batch_size", "field", "value", "unit"], scalars)

    def render(self, format: str = "json") -> str:
        """The report in ``format``: ``"json"``, ``"csv"`` or ``"markdown"`` (``"md"``)."""
        fmt = {"md": "markdown"}.get(format, format)
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            return self.to_csv()
        if fmt == "markdown":
            return self.to_markdown()
        raise ValueError(f"format: unknown report format {format!r}; choose from {', '.join(FORMATS)}")

    def save(self, path: "Union[str, os.PathLike[str]]", format: Optional[str] = None) -> str:
        """Write the report to ``path``; ``format=None`` picks it from the extension
        (``.json``, ``.csv``, ``.md``), else JSON. Returns the path written."""
        path = os.fspath(path)
        if format is None:
            format = _EXT.get(os.path.splitext(path)[1].lower(), "json")
        text = self.render(format)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        return path
