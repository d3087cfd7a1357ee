"""The trace contract (DESIGN.md "Contracts"): one row per round, grouped by agent, rounds from 0.

A round's prompt is the agent's whole context so far (all earlier appends and generations) plus its
append; its expected cached tokens are the context before its append, or, for imported rounds whose
agents were inferred, the leading hash-id blocks an infinite cache has already seen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traces.errors import InputError

REQUIRED = ("agent_id", "round", "append_tokens", "gen_tokens", "tool_latency_s")
OPTIONAL = ("arrival_s", "hash_ids", "source_row")
EVERY_ROW_OR_NONE = ("arrival_s", "source_row")  # optional columns that a trace gives for every row or not at all
ARROW_TYPES = {
    "agent_id": pa.string(),
    "round": pa.int64(),
    "append_tokens": pa.int64(),
    "gen_tokens": pa.int64(),
    "tool_latency_s": pa.float64(),
    "arrival_s": pa.float64(),
    "hash_ids": pa.list_(pa.int64()),
    "source_row": pa.int64(),  # the round's position among the rows of the file it was imported from
}
# File-level metadata keys (all stored as strings in Parquet key-value metadata).
META_KEYS = ("block_size", "source", "generator", "seed", "agents", "params")
DEFAULT_BLOCK_SIZE = 512
MAX_TOKENS = 2**40  # per round: keeps every agent's running context far inside int64


def arrow_schema(columns, meta: dict | None = None) -> pa.Schema:
    fields = [pa.field(c, ARROW_TYPES[c], nullable=(c in OPTIONAL)) for c in columns]
    return pa.schema(fields, metadata=encode_meta(meta or {}))


def encode_meta(meta: dict) -> dict[bytes, bytes]:
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k.encode()] = (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)).encode()
    return out


def decode_meta(raw: dict | None) -> dict:
    meta: dict = {}
    for k, v in (raw or {}).items():
        key = k.decode(errors="replace") if isinstance(k, bytes) else k
        if key.startswith("pandas") or key.startswith("ARROW"):
            continue
        try:
            text = v.decode() if isinstance(v, bytes) else v
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text in the trace metadata", field=key) from None
        if key == "params":
            from traces.io import decode_json  # (traces.io imports this module)

            try:
                text = decode_json(text)
            except InputError as exc:
                raise InputError(f"{exc.problem} in the trace metadata", field=key) from None
            if not isinstance(text, dict):
                raise InputError(f"expected a JSON object in the trace metadata, got a {type(text).__name__}",
                                 field=key)
        meta[key] = text
    return normalize_meta(meta)


def normalize_meta(meta: dict) -> dict:
    """The same types whatever the file format: integers for block_size (> 0) and seed."""
    for key in ("block_size", "seed"):
        if key not in meta or (key == "seed" and meta[key] is None):
            continue
        value = meta[key]
        try:
            number = int(value) if not isinstance(value, (bool, float)) else None
        except (TypeError, ValueError):
            number = None
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        if number is None or (key == "block_size" and number <= 0):
            what = "a positive integer" if key == "block_size" else "an integer"
            raise InputError(f"expected {what} in the trace metadata, got {value!r}", field=key)
        meta[key] = number
    return meta


@dataclass
class Trace:
    """A validated trace: an Arrow table (rows grouped by agent, rounds 0..n-1) and its metadata."""

    table: pa.Table
    meta: dict = field(default_factory=dict)

    # ----- column access -------------------------------------------------------------------------
    def col(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    @property
    def num_rounds(self) -> int:
        return self.table.num_rows

    @property
    def block_size(self) -> int:
        return int(self.meta.get("block_size", DEFAULT_BLOCK_SIZE))

    @property
    def agents_known(self) -> bool:
        """False for traces whose agents were inferred from hash-id chains (plain Mooncake rows)."""
        return self.meta.get("agents", "known") != "inferred"

    # ----- derived per-round quantities ----------------------------------------------------------
    def agent_starts(self) -> np.ndarray:
        """Row index where each agent's round 0 is (rows are grouped by agent)."""
        return np.flatnonzero(self.col("round") == 0)

    def agent_index(self) -> np.ndarray:
        """For every row, the index (0..agents-1) of its agent."""
        return np.cumsum(self.col("round") == 0) - 1

    def context_before(self) -> np.ndarray:
        """Tokens of the agent's context before each round's append (earlier appends + generations)."""
        inc = self.col("append_tokens") + self.col("gen_tokens")
        csum = np.cumsum(inc)
        starts = self.agent_starts()
        agent = self.agent_index()
        base = np.concatenate(([0], csum))[starts][agent]
        return csum - inc - base

    def prompt_tokens(self) -> np.ndarray:
        return self.context_before() + self.col("append_tokens")

    def expected_cached_tokens(self) -> np.ndarray:
        """What the trace says can be reused: the client-side rule for known agents, hash ids for inferred
        ones, and the larger of the two for agents linked by their parents (Bailian: an agent branched
        off another shares its prefix)."""
        linked = self.meta.get("agents") == "linked"
        if (self.agents_known and not linked) or not self.has("hash_ids"):
            return self.context_before()
        from traces.hits import infinite_cache_hits
        hits = infinite_cache_hits(self.table.column("hash_ids").combine_chunks(), self.prompt_tokens(),
                                   self.block_size, order=self.arrival_order())
        return np.maximum(hits, self.context_before()) if linked else hits

    def arrival_order(self) -> np.ndarray | None:
        """Row order by original timestamp (for hash-id hits replayed in the order they were seen, and
        for export); rounds of equal timestamps keep the order of the file they were imported from
        (`source_row`), else the table's."""
        if not self.has("arrival_s"):
            return None
        if self.has("source_row"):
            return np.lexsort((self.col("source_row"), self.col("arrival_s")))
        return np.argsort(self.col("arrival_s"), kind="stable")


def validate_table(table: pa.Table, path: str | None = None, *, lines=None,
                   block_size: int | None = None) -> pa.Table:
    """Check columns, types, the row structure and hash-id lengths; return the table in contract order
    and types. `lines[i]` is the file line of row i (default i + 1) for error messages. An optional
    column with no value on any row is dropped."""
    def line(row: int) -> int:
        return int(lines[row]) if lines is not None else row + 1

    names = table.column_names
    for c in REQUIRED:
        if c not in names:
            raise InputError("missing column", path=path, field=c)
    columns = {}
    for c in (c for c in REQUIRED + OPTIONAL if c in names):
        column = table.column(c)
        if column.null_count:
            missing = np.asarray(column.is_null())
            if c in OPTIONAL and missing.all():
                continue
            if c in REQUIRED or c in EVERY_ROW_OR_NONE:
                problem = "missing value" + ("" if c in REQUIRED else " (other rows have one: give it on all or none)")
                raise InputError(problem, path=path, line=line(_first_true(missing)), field=c)
        try:
            columns[c] = column.cast(ARROW_TYPES[c], safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
            raise InputError(f"wrong column type {column.type}, expected {ARROW_TYPES[c]} ({exc})", path=path,
                             field=c) from None
    table = pa.table(columns, schema=arrow_schema(list(columns)))
    for c in ("append_tokens", "gen_tokens"):
        v = table.column(c).to_numpy()
        bad = v < 0
        if bad.any():
            row = _first_true(bad)
            raise InputError(f"negative length {v[row]}", path=path, line=line(row), field=c)
        bad = v > MAX_TOKENS
        if bad.any():
            row = _first_true(bad)
            raise InputError(f"too large ({v[row]} tokens; at most 2^40 per round)", path=path, line=line(row),
                             field=c)
    for c in ("tool_latency_s", "arrival_s", "source_row"):
        if c not in columns:
            continue
        v = table.column(c).to_numpy()
        bad = ~(v >= 0) | ~np.isfinite(v)
        if bad.any():
            row = _first_true(bad)
            kind = "an integer" if c == "source_row" else "a finite number"
            raise InputError(f"must be {kind} >= 0, got {v[row]}", path=path, line=line(row), field=c)
    check_rounds(table.column("agent_id").to_numpy(zero_copy_only=False),
                 table.column("round").to_numpy(), path, line)
    if "hash_ids" in columns:
        check_hash_ids(table, block_size or DEFAULT_BLOCK_SIZE, path, line)
    return table


def check_hash_ids(table: pa.Table, block_size: int, path: str | None, line) -> None:
    """Where a round has hash ids, there must be ceil(prompt / block_size) of them, none of them null."""
    ids = table.column("hash_ids").combine_chunks()
    flat = pc.list_flatten(ids)
    if flat.null_count:
        row = int(pc.list_parent_indices(ids).to_numpy()[_first_true(np.asarray(flat.is_null()))])
        raise InputError("a null inside the list (expected 64-bit integers)", path=path, line=line(row),
                         field="hash_ids")
    have = ids.value_lengths().to_numpy(zero_copy_only=False)
    present = ~np.asarray(ids.is_null())
    trace = Trace(table, {"block_size": block_size})
    want = -(-trace.prompt_tokens() // block_size)
    bad = present & (np.nan_to_num(have.astype(float), nan=-1) != want)
    if bad.any():
        row = _first_true(bad)
        raise InputError(f"has {int(have[row])} ids, expected ceil(prompt {int(trace.prompt_tokens()[row])} / "
                         f"block size {block_size}) = {int(want[row])}", path=path, line=line(row), field="hash_ids")


def check_rounds(agent_ids: np.ndarray, rounds: np.ndarray, path: str | None, line=lambda row: row + 1) -> None:
    """Rows must be grouped by agent with rounds 0, 1, 2, ... in order."""
    n = len(rounds)
    if n == 0:
        raise InputError("trace has no rounds", path=path)
    new_agent = np.ones(n, dtype=bool)
    new_agent[1:] = agent_ids[1:] != agent_ids[:-1]
    expected = np.arange(n) - np.maximum.accumulate(np.where(new_agent, np.arange(n), 0))
    bad = rounds != expected
    if bad.any():
        row = _first_true(bad)
        raise InputError(f"expected round {expected[row]} of agent {agent_ids[row]!r}, got {rounds[row]} "
                         "(rows must be grouped by agent, rounds 0, 1, 2, ...)", path=path, line=line(row),
                         field="round")
    starts = np.flatnonzero(new_agent)
    ids = agent_ids[starts]
    if len(set(ids.tolist())) != len(ids):
        seen: set = set()
        for s, a in zip(starts, ids):
            if a in seen:
                raise InputError(f"agent {a!r} appears in two separate groups of rows", path=path,
                                 line=line(int(s)), field="agent_id")
            seen.add(a)


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])
