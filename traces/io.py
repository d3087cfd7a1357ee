"""Reading and writing traces: Parquet (primary), JSONL (interchange), Mooncake and Bailian JSONL (via import).

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

FORMATS = ("auto", "parquet", "jsonl", "mooncake", "bailian")
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


def _open_bytes(path: str) -> io.BufferedIOBase:
    """Open a file for reading bytes, transparently un-gzipping `.gz` files."""
    try:
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a trace file", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=path) from None


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, decoded JSON value) for every non-blank line of a JSON-lines file (gzipped if `.gz`).

    The one reader of JSON lines (our JSONL traces and Mooncake rows): a read error (a truncated gzip
    stream, say), bytes that are not UTF-8 and JSON that does not decode are InputErrors naming the line.
    """
    p = str(path)
    with _open_bytes(p) as fh:
        lines = iter(fh)
        lineno = 0
        while True:
            lineno += 1
            try:
                raw = next(lines)
            except StopIteration:
                return
            except gzip.BadGzipFile as exc:  # the whole file, not a line
                raise InputError(f"cannot read ({exc})", path=p) from None
            except (OSError, EOFError) as exc:
                raise InputError(f"cannot read ({exc})", path=p, line=lineno) from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                                 path=p, line=lineno) from None
            if text.strip():
                yield lineno, decode_json(text, p, lineno)


def decode_json(text: str, path: str | None = None, line: int | None = None):
    """json.loads, with every way it can fail on bad input turned into an InputError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = exc.msg
    except ValueError as exc:  # an integer of more than 4,300 digits
        problem = str(exc).split(";")[0]
    except RecursionError:
        problem = "nested too deeply"
    raise InputError(f"malformed JSON ({problem})", path=path, line=line)


def output_format(path: str | os.PathLike) -> str:
    p = str(path)
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith(".jsonl"):
        return "jsonl"
    raise InputError("output must end in .parquet or .jsonl", field="-o", path=None)


# ----- format detection ---------------------------------------------------------------------------
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def detect_format(path: str | os.PathLike) -> str:
    """parquet by name; otherwise from the first row: ours if it has an `agent_id` (or the file starts with
    our header), Bailian if it has a `chat_id` and `parent_chat_id`, Mooncake if it has Mooncake's fields."""
    p = str(path)
    if p.endswith(".parquet"):
        return "parquet"
    for _, obj in json_lines(p):
        if not isinstance(obj, dict) or JSONL_HEADER_KEY in obj or "agent_id" in obj:
            return "jsonl"
        if "chat_id" in obj and "parent_chat_id" in obj:
            return "bailian"
        return "mooncake" if any(k in obj for k in MOONCAKE_KEYS) else "jsonl"
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
    if fmt == "bailian":
        from traces.bailian import import_bailian
        return import_bailian(p, block_size=block_size)
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
        fh.write(json.dumps({JSONL_HEADER_KEY: 1, "meta": trace.meta}, sort_keys=True, allow_nan=False) + "\n")
        for i in range(trace.table.num_rows):
            row = {c: data[c][i] for c in cols}
            if row.get("hash_ids") is None:
                row.pop("hash_ids", None)
            fh.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")


def _read_jsonl(path: str) -> Trace:
    meta: dict = {}
    meta_line = 1
    rows: dict[str, list] = {c: [] for c in REQUIRED + OPTIONAL}
    lines: list[int] = []
    seen_optional: set[str] = set()
    id_types = IdTypes("agent_id")
    for lineno, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path=path, line=lineno)
        if JSONL_HEADER_KEY in obj:
            given = obj.get("meta")
            if given is not None and not isinstance(given, dict):
                raise InputError(f"expected a JSON object, got {given!r}", path=path, line=lineno, field="meta")
            meta, meta_line = dict(given or {}), lineno
            continue
        lines.append(lineno)
        for c in REQUIRED:
            if c not in obj:
                raise InputError("missing field", path=path, line=lineno, field=c)
            rows[c].append(_check_value(c, obj[c], path, lineno))
        id_types.see(obj["agent_id"], path, lineno)
        for c in OPTIONAL:
            v = obj.get(c)
            if v is not None:
                seen_optional.add(c)
                v = _check_value(c, v, path, lineno)
            rows[c].append(v)  # a value missing on some rows only: validate_table says where
    cols = [c for c in REQUIRED + OPTIONAL if c in REQUIRED or c in seen_optional]
    if not lines:
        raise InputError("trace has no rounds", path=path)
    table = pa.table({c: pa.array(rows[c], type=ARROW_TYPES[c]) for c in cols})
    try:
        meta = normalize_meta(meta)
    except InputError as exc:
        raise exc.at(path, meta_line) from None
    return Trace(validate_table(table, path, lines=lines, block_size=meta.get("block_size")), meta)


def finite_number(v) -> bool:
    """A JSON number that is finite as a float (huge integers and NaN/Infinity are not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def id_text(v, path: str | None, line: int | None, field: str) -> str:
    """An id given as a JSON string or integer, as text; a string must be valid Unicode (JSON can spell
    a lone surrogate such as \\ud800, which no file format can store)."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise InputError(f"expected a string or integer, got {v!r}", path=path, line=line, field=field)
    if isinstance(v, int):
        return str(v)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"not valid Unicode (a lone surrogate): {v!r}", path=path, line=line, field=field) from None
    return v


class IdTypes:
    """Ids of one file are all strings or all integers: integer 1 and string "1" would be one agent."""

    def __init__(self, field: str):
        self.field = field
        self.first: type | None = None

    def see(self, v, path: str | None, line: int) -> None:
        kind = int if isinstance(v, int) else str
        if self.first is None:
            self.first = kind
        elif kind is not self.first:
            names = {int: "integers", str: "strings"}
            raise InputError(f"earlier rows give {names[self.first]}, this one {v!r} (integer 1 and string \"1\" "
                             "would be the same agent: use one type)", path=path, line=line, field=self.field)


def _check_value(col: str, v, path: str, line: int):
    """Type and range check of one JSONL field, with a precise error."""
    if col == "agent_id":
        return id_text(v, path, line, col)
    if col in ("round", "append_tokens", "gen_tokens", "source_row"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"expected an integer, got {v!r}", path=path, line=line, field=col)
        if v < 0:
            what = "length" if col.endswith("_tokens") else col.replace("_", " ")
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
