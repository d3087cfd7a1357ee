"""Reading and writing traces: Parquet (primary), JSONL (interchange), Mooncake JSONL (via import).

Output files are written atomically (a temporary file beside the target, renamed when complete), so
a failure never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import InputError
from traces.schema import (ARROW_TYPES, OPTIONAL, REQUIRED, Trace, arrow_schema, decode_meta, normalize_meta,
                           validate_table)

FORMATS = ("auto", "parquet", "jsonl", "mooncake")
JSONL_HEADER_KEY = "dualpath_trace"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


# ----- atomic output ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise InputError("is a directory", path=str(target), field="-o")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(f"cannot write here ({exc.strerror or exc})", path=str(target), field="-o") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, target)
        except OSError as exc:
            raise InputError(f"cannot write here ({exc.strerror or exc})", path=str(target), field="-o") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file for reading, transparently un-gzipping `.gz` files."""
    p = str(path)
    try:
        if p.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
        return open(p, encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file", path=p) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a trace file", path=p) from None


def output_format(path: str | os.PathLike) -> str:
    p = str(path)
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith(".jsonl"):
        return "jsonl"
    raise InputError("output must end in .parquet or .jsonl", field="-o", path=None)


# ----- format detection ---------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    p = str(path)
    if p.endswith(".parquet"):
        return "parquet"
    with open_text(p) as fh:
        try:
            first = fh.readline()
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise InputError(f"cannot read ({exc})", path=p) from None
    try:
        obj = json.loads(first) if first.strip() else {}
    except json.JSONDecodeError:
        raise InputError("not JSON (expected a .parquet file or JSON lines)", path=p, line=1) from None
    if isinstance(obj, dict) and ("input_length" in obj or "hash_ids" in obj or "timestamp" in obj):
        return "mooncake"
    return "jsonl"


def read_trace(path: str | os.PathLike, fmt: str = "auto", *, block_size: int | None = None) -> Trace:
    """Read a trace in any supported format (Mooncake rows are imported, agents inferred or read)."""
    p = str(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})", field="--format")
    if not os.path.exists(p):
        raise InputError("no such file", path=p)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "parquet":
        return _read_parquet(p)
    if fmt == "jsonl":
        return _read_jsonl(p)
    from traces.mooncake import import_mooncake
    return import_mooncake(p, block_size=block_size)


def write_trace(trace: Trace, path: str | os.PathLike) -> None:
    fmt = output_format(path)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            table = trace.table.replace_schema_metadata(arrow_schema(trace.table.column_names, trace.meta).metadata)
            pq.write_table(table, tmp, compression="zstd")
        else:
            _write_jsonl(trace, tmp)


# ----- Parquet ------------------------------------------------------------------------------------
def _read_parquet(path: str) -> Trace:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    try:
        meta = decode_meta(table.schema.metadata)
    except InputError as exc:
        raise exc.at(path) from None
    return Trace(validate_table(table, path, block_size=meta.get("block_size")), meta)


# ----- JSONL --------------------------------------------------------------------------------------
def _write_jsonl(trace: Trace, path: Path) -> None:
    cols = trace.table.column_names
    data = {c: trace.table.column(c).to_pylist() for c in cols}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({JSONL_HEADER_KEY: 1, "meta": trace.meta}, sort_keys=True) + "\n")
        for i in range(trace.table.num_rows):
            row = {c: data[c][i] for c in cols}
            if row.get("arrival_s") is None:
                row.pop("arrival_s", None)
            if row.get("hash_ids") is None:
                row.pop("hash_ids", None)
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


def _read_jsonl(path: str) -> Trace:
    meta: dict = {}
    rows: dict[str, list] = {c: [] for c in REQUIRED + OPTIONAL}
    lines: list[int] = []
    seen_optional: set[str] = set()
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON ({exc.msg})", path=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", path=path, line=lineno)
            if JSONL_HEADER_KEY in obj:
                meta = dict(obj.get("meta") or {})
                continue
            lines.append(lineno)
            for c in REQUIRED:
                if c not in obj:
                    raise InputError("missing field", path=path, line=lineno, field=c)
                rows[c].append(_check_value(c, obj[c], path, lineno))
            for c in OPTIONAL:
                v = obj.get(c)
                if v is not None:
                    seen_optional.add(c)
                    v = _check_value(c, v, path, lineno)
                rows[c].append(v)
    cols = [c for c in REQUIRED + OPTIONAL if c in REQUIRED or c in seen_optional]
    if not lines:
        raise InputError("trace has no rounds", path=path)
    table = pa.table({c: pa.array(rows[c], type=ARROW_TYPES[c]) for c in cols})
    try:
        meta = normalize_meta(meta)
    except InputError as exc:
        raise exc.at(path, 1) from None
    return Trace(validate_table(table, path, lines=lines, block_size=meta.get("block_size")), meta)


def finite_number(v) -> bool:
    """A JSON number that is finite as a float (huge integers and NaN/Infinity are not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _check_value(col: str, v, path: str, line: int):
    """Type and range check of one JSONL field, with a precise error."""
    if col == "agent_id":
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise InputError(f"expected a string, got {type(v).__name__}", path=path, line=line, field=col)
        return str(v)
    if col in ("round", "append_tokens", "gen_tokens"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"expected an integer, got {v!r}", path=path, line=line, field=col)
        if v < 0:
            what = "round" if col == "round" else "length"
            raise InputError(f"negative {what} {v}", path=path, line=line, field=col)
        if v > INT64_MAX:
            raise InputError(f"too large ({v})", path=path, line=line, field=col)
        return v
    if col in ("tool_latency_s", "arrival_s"):
        if not finite_number(v) or v < 0:
            raise InputError(f"expected a finite number >= 0, got {v!r}", path=path, line=line, field=col)
        return float(v)
    if col == "hash_ids":
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) or not INT64_MIN <= x <= INT64_MAX
                                          for x in v):
            raise InputError("expected a list of 64-bit integers", path=path, line=line, field=col)
        return v
    return v
