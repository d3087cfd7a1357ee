"""The results directory (DESIGN.md "Results directory"), written incrementally by every backend.

    results/<run-id>/scenario.yaml     the resolved scenario, written first
                     summary.json      rewritten after each system and at close (`status`)
                     requests.parquet  agents.parquet  links.parquet  engines.parquet   (at close)
                     latency.hlog      HdrHistogram interval log: TTFT (us) per system per window

While a run is going, each table is an Arrow IPC *stream* (`requests.arrows`, ...) that gets one record
batch per `requests(batch)` call, flushed at once: a run killed halfway keeps every complete batch, and
`load_results` reads them back. `close()` converts the streams to Parquet (zstd) and removes them.

A backend drives a `ResultsWriter`: `begin_system(name)`, then any number of `requests/agents/links/
engines(batch)` calls (a batch is a columnar dict: column -> list or array, holding the contract's
columns; `system` may be left out), then `end_system()`, which returns that system's summary. Columns
beyond the contract are kept (e.g. `itl_s`, a list of inter-token gaps per request).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hdrh.log import HistogramLogWriter

from engines import contract
from harness import metrics
from harness.scenario import REPO_ROOT, dump_scenario
from traces.errors import InputError

_ARROW = {contract.F64: pa.float64(), contract.I64: pa.int64(), contract.STR: pa.string(),
          contract.F64_LIST: pa.list_(pa.float64())}
CONTRACT: dict[str, dict[str, pa.DataType]] = {
    table: {name: _ARROW[typ] for name, typ in columns.items()} for table, columns in contract.COLUMNS.items()}
TABLES = contract.TABLES
# Columns a batch may leave out: filled with null (str, int) or NaN (float). Float columns always allow
# NaN ("not reached"); the other columns listed here allow null.
OMITTABLE = {
    "requests": {"t_second_token", "cached_tokens", "pe", "de", "error", *contract.BREAKDOWN_COLUMNS,
                 "t_dispatched", "itl_s", "server_prompt_tokens", "tokens_from", "http_status", "max_tokens",
                 "output_digest"},
    "agents": set(), "links": set(), "engines": {"group"},
}
for _omittable in OMITTABLE.values():
    _omittable.add("repeat")  # the writer fills it in
NULLABLE = {"requests": {"cached_tokens", "pe", "de", "error", "itl_s", "server_prompt_tokens", "tokens_from",
                         "http_status", "max_tokens", "output_digest"}, "agents": set(), "links": set(),
            "engines": {"group", "queued_tokens", "read_queue_tokens"}}  # null: not measured (a live PE's queue)
ALLOWED_VALUES = {
    ("requests", "status"): contract.STATUSES, ("requests", "read_side"): contract.READ_SIDES,
    ("agents", "status"): contract.STATUSES, ("links", "direction"): contract.DIRECTIONS,
    ("links", "traffic"): contract.TRAFFIC, ("engines", "role"): contract.ROLES,
}
LINK_NAME = contract.LINK_NAME
STREAM_SUFFIX = ".arrows"
RUN_STATUSES = contract.RUN_STATUSES
SCHEMA_VERSION = 1  # meta.schema: results of different versions are not compared (dualpath gate)


# ----- batches -> Arrow tables with the contract's types ---------------------------------------------
def contract_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, typ) for name, typ in CONTRACT[table].items()])


def _column(values, typ: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    elif pa.types.is_floating(typ):
        arr = pa.array(values, type=typ)
    else:  # infer, then cast safely: pa.array([1.5], type=int64) would truncate silently
        arr = pa.array(values, type=None if len(values) else typ)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != typ:
        arr = arr.cast(typ, safe=True)
    if pa.types.is_floating(typ) and arr.null_count:
        arr = pc.fill_null(arr, math.nan)
    return arr


def to_table(table: str, batch: Mapping, system: str) -> pa.Table:
    """Check a columnar batch against the contract and give it the contract's types and column order
    (extra columns follow, types inferred). Raises ValueError naming the table and column."""
    columns = dict(batch)
    columns.setdefault("system", [system] * _length(columns))
    missing = [c for c in CONTRACT[table] if c not in columns and c not in OMITTABLE[table]]
    if missing:
        raise ValueError(f"{table} batch: missing column(s) {', '.join(missing)}")
    n = _length(columns)
    arrays, names = [], []
    for name, typ in CONTRACT[table].items():
        values = columns[name] if name in columns else pa.nulls(n, typ)
        try:
            arr = _column(values, typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{table}.{name}: cannot convert to {typ} ({exc})") from None
        if len(arr) != n:
            raise ValueError(f"{table} batch: column {name} has {len(arr)} rows, others {n}")
        if arr.null_count and name not in NULLABLE[table] and not pa.types.is_floating(typ) and name in columns:
            raise ValueError(f"{table}.{name}: null values are not allowed")
        arrays.append(arr)
        names.append(name)
    for name, values in columns.items():
        if name not in CONTRACT[table]:
            arr = values if isinstance(values, pa.Array) else pa.array(values)
            if len(arr) != n:
                raise ValueError(f"{table} batch: column {name} has {len(arr)} rows, others {n}")
            arrays.append(arr)
            names.append(name)
    result = pa.table(arrays, names=names)
    _check_values(table, result, system)
    return result


def _length(columns: Mapping) -> int:
    for name, values in columns.items():
        if name != "system":
            return len(values)
    return len(columns.get("system", ()))


def _check_values(table: str, t: pa.Table, system: str) -> None:
    wrong = pc.invert(pc.equal(t["system"], system)).combine_chunks()
    if t.num_rows and pc.any(pc.fill_null(wrong, True)).as_py():
        raise ValueError(f"{table}.system: rows of another system (the open system is {system!r})")
    for (name, column), allowed in ALLOWED_VALUES.items():
        if name == table:
            bad = pc.invert(pc.is_in(t[column], value_set=pa.array(allowed)))
            if t.num_rows and pc.any(bad).as_py():
                value = t[column].filter(bad)[0].as_py()
                raise ValueError(f"{table}.{column}: {value!r} is not one of {', '.join(allowed)}")
    if table == "links" and t.num_rows:
        bad = pc.invert(pc.match_substring_regex(t["link"], f"^({LINK_NAME})$"))
        if pc.any(bad).as_py():
            raise ValueError(f"links.link: {t['link'].filter(bad)[0].as_py()!r} is not snic, dram or cnicN")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """`table` with `schema`'s columns (missing ones null), or None if it has columns the schema lacks."""
    if set(table.column_names) - set(schema.names):
        return None
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table[field.name]
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None
        arrays.append(col)
    return pa.table(arrays, schema=schema)


# ----- Arrow IPC streams, one or more segments per table ----------------------------------------------
class _Stream:
    """Appends tables to `<name>.arrows`; a batch with new extra columns starts `<name>.<k>.arrows`."""

    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name
        self.segments = 0
        self.file = self.writer = self.schema = None

    def write(self, table: pa.Table) -> None:
        if self.writer is not None:
            conformed = _conform(table, self.schema)
            if conformed is None:
                self.close()
            else:
                table = conformed
        if self.writer is None:
            self.segments += 1
            suffix = STREAM_SUFFIX if self.segments == 1 else f".{self.segments}{STREAM_SUFFIX}"
            self.file = open(self.directory / f"{self.name}{suffix}", "wb")
            self.schema = table.schema
            self.writer = pa.ipc.new_stream(self.file, self.schema)
        self.writer.write_table(table)
        self.file.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.file.close()
        self.file = self.writer = self.schema = None


# The frames a system's summary is computed from keep strings in Arrow buffers (pandas' "string[pyarrow]",
# not a Python object a value) and leave out the columns no summary reads: at 8P16D with 8,192 agents the
# summary was the run's peak memory.
_ARROW_STRINGS = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}
UNSUMMARISED = {"requests": ("agent_id", "read_bytes", "tokens_from", "http_status", "output_digest")}
ROW_GROUP_ROWS = 1 << 20  # rows per Parquet row group (pyarrow's default for write_table)


def stream_segments(directory: Path, name: str) -> list[Path]:
    def order(p: Path) -> int:
        middle = p.name[len(name):-len(STREAM_SUFFIX)]
        return int(middle[1:]) if middle else 1
    found = [p for p in directory.glob(f"{name}*{STREAM_SUFFIX}")
             if re.fullmatch(rf"{re.escape(name)}(\.\d+)?{re.escape(STREAM_SUFFIX)}", p.name)]
    return sorted(found, key=order)


def _stream_batches(path: Path):
    """A stream file's schema and an iterator of its complete record batches (a torn last batch, from a
    killed writer, ends it); (None, nothing) when the writer was killed before the schema was complete."""
    fh = open(path, "rb")
    try:
        reader = pa.ipc.open_stream(fh)
    except (pa.ArrowInvalid, OSError):
        fh.close()
        return None, iter(())

    def batches():
        with fh:
            while True:
                try:
                    yield reader.read_next_batch()
                except (StopIteration, pa.ArrowInvalid, OSError):
                    return
    return reader.schema, batches()


def _read_stream(path: Path) -> tuple[pa.Schema | None, list[pa.RecordBatch]]:
    """Every complete record batch of a stream file; a torn last batch (killed writer) is left out."""
    schema, batches = _stream_batches(path)
    return schema, list(batches)


def read_streams(directory: Path, name: str) -> pa.Table:
    """All segments of a table's streams as one table (contract columns first, extras unified)."""
    parts = [_read_stream(p) for p in stream_segments(directory, name)]
    schemas = [contract_schema(name)] + [s for s, _ in parts if s is not None]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    tables = [_conform(pa.Table.from_batches(batches, schema=s), schema) for s, batches in parts if s is not None]
    return pa.concat_tables([t for t in tables if t is not None] or [schema.empty_table()])


def _streams_to_parquet(directory: Path, name: str) -> None:
    """The streams of a table as one Parquet file, written a row group at a time (ROW_GROUP_ROWS rows),
    so converting never holds more than a row group besides the file's footer."""
    segments = stream_segments(directory, name)
    opened = [_stream_batches(p) for p in segments]
    schema = pa.unify_schemas([contract_schema(name)] + [s for s, _ in opened if s is not None],
                              promote_options="permissive")
    tmp = directory / f".{name}.parquet.tmp"
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        group, rows = [], 0
        for seg_schema, batches in opened:
            for batch in batches:
                table = _conform(pa.Table.from_batches([batch], schema=seg_schema), schema)
                if table is None:
                    continue
                group.append(table)
                rows += table.num_rows
                if rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(group))
                    group, rows = [], 0
        if group:
            writer.write_table(pa.concat_tables(group))
    os.replace(tmp, directory / f"{name}.parquet")
    for p in segments:
        p.unlink()


# ----- reading a results directory -------------------------------------------------------------------
def load_results(run_dir: str | os.PathLike) -> dict:
    """{requests, agents, links, engines: DataFrame} from the Parquet files, or from the streams of a run
    that did not close (every complete batch), plus `summary` (dict) when summary.json exists."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise InputError("no such results directory", path=str(directory))
    out: dict = {}
    for name in TABLES:
        parquet = directory / f"{name}.parquet"
        table = pq.read_table(parquet) if parquet.exists() else read_streams(directory, name)
        out[name] = table.to_pandas()
    summary = directory / "summary.json"
    if summary.exists():
        out["summary"] = load_summary(summary)
    return out


def load_summary(path: str | os.PathLike) -> dict:
    """A summary.json (or a copy of one under another name) on its own."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({getattr(exc, 'strerror', None) or exc})", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InputError("not a summary (a JSON object with `systems` or `capacity`)", path=str(path))
    return obj


def new_run_dir(root: str | os.PathLike, name: str, now: dt.datetime | None = None) -> Path:
    """Create and return `root/<name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... if that exists."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = Path(root) / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise InputError("too many runs with the same name and second", path=str(root))


def claim_run_dir(run_dir: str | os.PathLike, scenario: dict) -> Path:
    """Make `run_dir` this run's (refusing one that holds a run already) and write its scenario.yaml."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the results directory ({exc.strerror})", path=str(path)) from None
    if (path / "scenario.yaml").exists():
        raise InputError("already holds a run (scenario.yaml exists); use a new directory", path=str(path))
    dump_scenario(scenario, path / "scenario.yaml")
    return path


# ----- metadata -------------------------------------------------------------------------------------
def _versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for dist in ("dualpath-bench", "numpy", "pandas", "pyarrow", "hdrhistogram", "PyYAML"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git() -> dict:
    def run(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return {"commit": run("rev-parse", "HEAD"),
                "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def run_meta(scenario: dict, extra: dict | None) -> dict:
    meta = {
        "schema": SCHEMA_VERSION,
        "scenario": scenario,
        "seed": scenario.get("seed"),
        "versions": _versions(),
        "git": _git(),
        "host": {"name": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                 "argv": sys.argv},
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "times": "seconds from the run's start on a monotonic clock (virtual time for backend sim)",
    }
    meta.update(extra or {})
    return meta


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----- the writer -----------------------------------------------------------------------------------
class ResultsWriter:
    """Writes one run's results directory as the run goes (see module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, scenario: dict, meta_extra: dict | None = None):
        self.run_dir = claim_run_dir(run_dir, scenario)
        self.scenario = scenario
        self.window_s = float((scenario.get("telemetry") or {}).get("window_s", 1.0))
        self.slo = scenario.get("slo")
        self.arrival = scenario.get("arrival")
        self.meta = run_meta(scenario, meta_extra)
        self.summaries: dict[str, dict] = {}
        self.status = "running"
        self.system: str | None = None
        self.repeat = 0
        self._repeats: dict[str, dict[int, dict]] = {}  # system -> repeat -> summary, when repeated
        self._measured: set[tuple[str, int]] = set()
        self._started = time.perf_counter()
        self._streams = {name: _Stream(self.run_dir, name) for name in TABLES}
        self._pending: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        self._hlog_path = self.run_dir / "latency.hlog"
        self._write_hlog_header()
        self._write_summary()

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    # -- the record sink --
    def begin_system(self, name: str, repeat: int = 0) -> None:
        """Open system `name`; `repeat` numbers its runs when it is measured several times (--repeats)."""
        self._check_open()
        if self.system is not None:
            raise RuntimeError(f"begin_system({name!r}) while {self.system!r} is open: call end_system() first")
        if (name, int(repeat)) in self._measured:
            raise RuntimeError(f"system {name!r} was already measured in this run" +
                               (f" (repeat {repeat})" if repeat else ""))
        self.system, self.repeat = name, int(repeat)
        self._measured.add((name, self.repeat))

    def requests(self, batch: Mapping) -> None:
        self._append("requests", batch)

    def agents(self, batch: Mapping) -> None:
        self._append("agents", batch)

    def links(self, batch: Mapping) -> None:
        self._append("links", batch)

    def engines(self, batch: Mapping) -> None:
        self._append("engines", batch)

    def _append(self, name: str, batch: Mapping) -> None:
        self._check_open()
        if self.system is None:
            raise RuntimeError(f"{name}(batch) outside a system: call begin_system(name) first")
        if "repeat" not in batch:
            batch = {**batch, "repeat": np.full(_length(batch), self.repeat, dtype=np.int64)}
        table = to_table(name, batch, self.system)
        if table.num_rows:
            self._streams[name].write(table)
            self._pending[name].append(table)

    def frames(self) -> dict[str, pd.DataFrame]:
        """The open system's records so far, as DataFrames for its summary: strings as `string[pyarrow]`,
        without the UNSUMMARISED columns (the Parquet files keep every column)."""
        out = {}
        for name, tables in self._pending.items():
            schema = pa.unify_schemas([contract_schema(name)] + [t.schema for t in tables],
                                      promote_options="permissive")
            table = pa.concat_tables([_conform(t, schema) for t in tables] or [schema.empty_table()])
            out[name] = table.drop_columns([c for c in UNSUMMARISED.get(name, ()) if c in table.column_names]
                                           ).to_pandas(types_mapper=_ARROW_STRINGS.get)
        return out

    def end_system(self, extra: dict | None = None, *, complete: bool = True,
                   frames: dict[str, pd.DataFrame] | None = None) -> dict:
        """Summarise the open system (metrics.summarize_system), log its TTFT intervals, save summary.json.
        `frames`: this system's `frames()` if the caller already made them (they are not made twice)."""
        self._check_open()
        if self.system is None:
            raise RuntimeError("end_system() without begin_system()")
        frames = frames if frames is not None else self.frames()
        self._pending = {name: [] for name in TABLES}  # the frames hold the records now (and the streams on disk)
        summary = {"system": self.system, "complete": complete,
                   **metrics.summarize_system(frames["requests"], frames["agents"], frames["links"],
                                              frames["engines"], self.slo, self.window_s, self.arrival)}
        for key, value in (extra or {}).items():
            if key in summary:
                raise ValueError(f"end_system(extra): {key!r} is a computed summary key")
            summary[key] = value
        self._write_hlog_intervals(self.system if not self.repeat else f"{self.system}/repeat{self.repeat}",
                                   frames["requests"])
        if self.repeat or self.system in self._repeats:
            runs = self._repeats.setdefault(self.system, {})
            if not runs and self.system in self.summaries:
                runs[0] = {**self.summaries[self.system], "repeat": 0}
            runs[self.repeat] = {**summary, "repeat": self.repeat}
            self.summaries[self.system] = metrics.pool_repeats([runs[r] for r in sorted(runs)])
        else:
            self.summaries[self.system] = summary
        self.system = None
        self._pending = {name: [] for name in TABLES}
        self._write_summary()
        return summary

    def close(self, status: str = "ok") -> dict:
        """Finish the run: summarise an open system as incomplete, convert streams to Parquet, write
        summary.json with `status`. Safe to call twice (the second call does nothing)."""
        if self.status != "running":
            return self.summary()
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES[1:])}, got {status!r}")
        try:
            if self.system is not None:
                self.end_system(complete=False)
        finally:
            self.status = status
            self.meta["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.meta["wall_s"] = time.perf_counter() - self._started
            for name, stream in self._streams.items():
                stream.close()
                _streams_to_parquet(self.run_dir, name)
            self._write_summary()
        return self.summary()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close("ok")
        else:
            self.meta["error"] = f"{exc_type.__name__}: {exc}".rstrip(": ")
            self.close("interrupted")
        return False

    # -- files --
    def summary(self) -> dict:
        return {"run_id": self.run_id, "status": self.status, "systems": self.summaries, "meta": self.meta}

    def _write_summary(self) -> None:
        write_json(self.run_dir / "summary.json", self.summary())

    def _check_open(self) -> None:
        if self.status != "running":
            raise RuntimeError("the results writer is closed")

    def _write_hlog_header(self) -> None:
        with open(self._hlog_path, "w", encoding="utf-8") as fh:
            self._write_hlog_header_to(fh)

    def _write_hlog_header_to(self, fh) -> None:
        log = HistogramLogWriter(fh)
        log.output_log_format_version()
        # output_start_time() is broken in hdrh 0.10 (passes ms to fromtimestamp): write the line ourselves
        start = time.time()
        stamp = dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(timespec="seconds")
        log.output_comment(f"[StartTime: {start:.3f} (seconds since epoch), {stamp}]")
        log.output_comment(f"[BaseTime: {start:.3f} (seconds since epoch)]")
        log.output_comment(f"[TTFT from t_scheduled in microseconds, per system (Tag) per {self.window_s:g} s "
                           "window of t_first_token; timestamps are seconds from each system's start]")
        log.output_legend()

    def _write_hlog_intervals(self, system: str, requests: pd.DataFrame) -> None:
        ok = metrics.ok_requests(requests)
        ttft = metrics.request_latencies(requests)["ttft_s"]
        t_first = pd.to_numeric(ok["t_first_token"]).to_numpy(dtype=np.float64) if len(ok) else np.zeros(0)
        with open(self._hlog_path, "a", encoding="utf-8") as fh:
            for start_s, hist, _ in metrics.interval_histograms(t_first, ttft, self.window_s):
                if hist.get_total_count():
                    fh.write(f"Tag={system},{start_s:.3f},{self.window_s:.3f},"
                             f"{hist.get_max_value() / 1e6:.6f},{metrics.encode_hdr(hist)}\n")
