"""What ``bitnet info`` says about a GGUF file: header, metadata (key, type, value), tensors.

Metadata and tensor records are read with the ``gguf`` package's GGUFReader, which keeps
each key's GGUF value type. Its type enum only knows upstream ggml ids, so tensors are
described from the raw tensor-info records (a small subclass skips GGUFReader's own tensor
building, which raises on ids it cannot name, such as bitnet.cpp's I2_S = 36). Type names
and byte sizes come from this package's validating reader (bitnet._core.GGUFFile) when it
accepts the file, else from gguf's tables; an id neither knows is shown by number with an
unknown size, never guessed.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .errors import BitNetError, BitNetFileNotFoundError, BitNetFormatError, ErrorCode

__all__ = ["describe_gguf", "format_description"]

# bitnet.cpp's architectures: for them type id 36 is I2_S (cpp/gguf.cpp, map_type_id).
_I2S_ARCHS = ("bitnet", "bitnet-b1.58", "bitnet-25")
_I2S_ID = 36


def _reader_class():
    import gguf

    class _Reader(gguf.GGUFReader):
        """GGUFReader that records tensor infos as (name, type id, ggml dims, offset) only."""

        def _build_tensors(self, start_offs: int, fields: list) -> None:
            self.tensor_infos = []
            for f in fields:
                _name_len, name_data, _n_dims, dims, raw_type, offset = f.parts
                self.tensor_infos.append((bytes(name_data).decode("utf-8", "replace"), int(raw_type[0]),
                                          [int(d) for d in dims], int(offset[0])))
            self.tensors = []

    return _Reader


def _value_type_name(types: List[Any]) -> str:
    if not types:
        return "?"
    if types[0].name == "ARRAY":
        return f"ARRAY[{types[-1].name}]" if len(types) > 1 else "ARRAY"
    return types[0].name


def _field_value(field: Any) -> Any:
    """A metadata value as plain Python (strings decoded, arrays as lists; nested arrays: None)."""
    types = field.types
    if types[0].name == "STRING":
        return bytes(field.parts[-1]).decode("utf-8", "replace")
    if types[0].name == "ARRAY":
        sub = types[-1].name if len(types) > 1 else None
        if sub == "STRING":
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        if sub == "ARRAY" or sub is None:
            return None
        return [v for i in field.data for v in field.parts[i].tolist()]
    v = field.parts[-1].tolist()[0]
    return bool(v) if types[0].name == "BOOL" else v


def describe_gguf(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Describe a GGUF file without loading it: header, metadata and tensor table.

    Returns a dict with ``path``, ``file_size``, ``version``, ``alignment``, ``data_offset``,
    ``architecture``, ``dialect`` (None when this package's reader rejects the file),
    ``loadable`` / ``load_error``, ``metadata`` (list of {key, type, value}), ``tensors``
    (list of {name, type, type_id, shape (ggml order, ne0 first), n_elements, offset,
    nbytes (None if unknown)}) and ``totals`` (per type and overall).

    Raises :class:`BitNetFileNotFoundError` for a missing file and
    :class:`BitNetFormatError` (or the reader's own :class:`BitNetError`) for a file that is
    not readable GGUF.
    """
    from . import _core

    p = os.fspath(path)
    ours, ours_error = None, None
    try:
        ours = _core.GGUFFile(p)
    except BitNetFileNotFoundError:
        raise
    except BitNetError as e:  # malformed, or a type this package does not run: gguf may still read it
        ours_error = e
    try:
        reader = _reader_class()(p)
    except Exception as e:  # gguf parses untrusted bytes; any failure means "not readable GGUF"
        if ours_error is not None:
            raise ours_error from None
        raise BitNetFormatError(ErrorCode.FILE, f"{p}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # header fields gguf exposes as pseudo-keys
            continue
        try:
            value = _field_value(field)
        except Exception:  # pragma: no cover - a value gguf parsed but we cannot convert
            value = None
        metadata.append({"key": key, "type": _value_type_name(field.types), "value": value})
    kv = {m["key"]: m["value"] for m in metadata}
    arch = kv.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    ours_tensors = {t["name"]: t for t in ours.tensors()} if ours is not None else {}
    file_size = os.path.getsize(p)
    tensors = []
    for name, type_id, dims, offset in reader.tensor_infos:
        n = 1
        for d in dims:
            n *= d
        type_name, nbytes = _type_and_size(type_id, n, arch, ours_tensors.get(name))
        t = {"name": name, "type": type_name, "type_id": type_id, "shape": dims, "n_elements": n,
             "offset": offset, "nbytes": nbytes}
        if nbytes is not None and reader.data_offset + offset + nbytes > file_size:
            t["truncated"] = True
        tensors.append(t)

    by_type: Dict[str, Dict[str, Any]] = {}
    for t in tensors:
        s = by_type.setdefault(t["type"], {"type": t["type"], "tensors": 0, "n_elements": 0, "nbytes": 0})
        s["tensors"] += 1
        s["n_elements"] += t["n_elements"]
        s["nbytes"] = None if s["nbytes"] is None or t["nbytes"] is None else s["nbytes"] + t["nbytes"]
    known = [t["nbytes"] for t in tensors if t["nbytes"] is not None]
    total = {"tensors": len(tensors), "n_elements": sum(t["n_elements"] for t in tensors),
             "nbytes": sum(known) if len(known) == len(tensors) else None,
             "nbytes_known": sum(known), "unknown_size": len(tensors) - len(known)}
    layers = kv.get(f"{arch}.block_count") if arch else None
    return {
        "path": p,
        "file_size": file_size,
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "architecture": arch,
        "name": kv.get("general.name"),
        "layers": layers if isinstance(layers, int) else None,
        "dialect": ours.dialect if ours is not None else None,
        "loadable": ours is not None,
        "load_error": str(ours_error) if ours_error is not None else None,
        "metadata": metadata,
        "tensors": tensors,
        "totals": {"by_type": sorted(by_type.values(), key=lambda s: s["type"]), "all": total},
    }


def _type_and_size(type_id: int, n: int, arch: Optional[str], ours: Optional[dict]):
    """(type name, nbytes or None): this package's reader first, then gguf's tables."""
    if ours is not None and ours["type_id"] == type_id:
        return ours["type"], int(ours["nbytes"])
    import gguf

    try:
        qt = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        qt = None
    if type_id == _I2S_ID and arch in _I2S_ARCHS:
        # bitnet.cpp's I2_S: n/4 bytes of 2-bit codes plus a 32-byte scale block.
        return "I2_S", n // 4 + 32
    if qt is None:
        return f"id {type_id}", None
    block, type_size = gguf.GGML_QUANT_SIZES.get(qt, (0, 0))
    if block <= 0 or n % block:
        return qt.name, None
    return qt.name, n // block * type_size


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------

_STR_MAX = 60
_ARRAY_SHOW = 8


def _short_str(s: str, limit: int = _STR_MAX) -> str:
    r = repr(s)
    if len(r) <= limit + 2:
        return r
    return f"{r[:limit]}... ({len(s)} chars)"


def _scalar(v: Any, type_name: str) -> str:
    if isinstance(v, str):
        return _short_str(v)
    if isinstance(v, float):
        return f"{v:.7g}" if type_name.endswith("FLOAT32]") or type_name == "FLOAT32" else repr(v)
    return repr(v)


def _value_text(type_name: str, v: Any) -> str:
    if v is None:
        return "(not shown)"
    if not isinstance(v, list):
        return _scalar(v, type_name)
    elem = type_name[6:-1].lower() if type_name.startswith("ARRAY[") else "values"
    items = [_scalar(x, type_name) if not isinstance(x, str) else _short_str(x, 24) for x in v[:_ARRAY_SHOW]]
    if len(v) <= _ARRAY_SHOW and sum(len(i) + 2 for i in items) <= 80:
        return "[" + ", ".join(items) + "]"
    unit = "strings" if elem == "string" else f"{elem}s" if elem != "values" else elem
    return f"[{len(v)} {unit}] first: " + ", ".join(items[:5]) + ", ..."


def _bytes_text(n: Optional[int]) -> str:
    if n is None:
        return "unknown size"
    if n < 2**20:
        return f"{n:,} bytes ({n / 2**10:.1f} KiB)"
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def _count(n: int) -> str:
    return f"{n:5d} tensor{'s' if n != 1 else ' '}"


def format_description(d: Dict[str, Any]) -> str:
    """The human-readable form of :func:`describe_gguf`'s dict (one string, no trailing newline)."""
    out = [f"file                {d['path']}",
           f"file size           {_bytes_text(d['file_size'])}",
           f"gguf version        {d['version']}, alignment {d['alignment']}, tensor data at offset {d['data_offset']:,}",
           f"architecture        {d['architecture']}" + (f" ({d['dialect']} dialect)" if d["dialect"] else ""),
           f"layers              {d['layers'] if d['layers'] is not None else 'unknown'}"]
    if d["name"]:
        out.append(f"name                {d['name']}")
    if not d["loadable"]:
        out.append(f"note: this package cannot load the file: {d['load_error']}")
    md = d["metadata"]
    out.append("")
    out.append(f"metadata ({len(md)} keys):")
    kw = max([len(m["key"]) for m in md] + [3])
    tw = max([len(m["type"]) for m in md] + [4])
    out.append(f"  {'key':{kw}s}  {'type':{tw}s}  value")
    for m in md:
        out.append(f"  {m['key']:{kw}s}  {m['type']:{tw}s}  {_value_text(m['type'], m['value'])}")
    ts = d["tensors"]
    out.append("")
    out.append(f"tensors ({len(ts)}; shape in ggml order, ne0 = row length first):")
    rows = [(t["name"], t["type"] if not t["type"].startswith("id ") else f"? ({t['type']})",
             " x ".join(str(x) for x in t["shape"]),
             f"{t['nbytes']:,}" if t["nbytes"] is not None else "?") for t in ts]
    head = ("name", "type", "shape", "bytes")
    w = [max([len(r[k]) for r in rows] + [len(head[k])]) for k in range(4)]
    out.append(f"  {head[0]:{w[0]}s}  {head[1]:{w[1]}s}  {head[2]:{w[2]}s}  {head[3]:>{w[3]}s}")
    for r, t in zip(rows, ts):
        line = f"  {r[0]:{w[0]}s}  {r[1]:{w[1]}s}  {r[2]:{w[2]}s}  {r[3]:>{w[3]}s}"
        out.append(line + ("  (past the end of the file)" if t.get("truncated") else ""))
    out.append("")
    out.append("totals:")
    for s in d["totals"]["by_type"]:
        out.append(f"  {s['type']:8s} {_count(s['tensors'])}  {s['n_elements']:>15,} elements  {_bytes_text(s['nbytes'])}")
    a = d["totals"]["all"]
    size = _bytes_text(a["nbytes"]) if a["nbytes"] is not None else (
        f"at least {_bytes_text(a['nbytes_known'])}; {_count(a['unknown_size']).strip()} of unknown size")
    out.append(f"  {'all':8s} {_count(a['tensors'])}  {a['n_elements']:>15,} elements  {size}")
    return "\n".join(out)
