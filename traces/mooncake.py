"""Mooncake FAST'25 trace rows <-> our trace format.

A Mooncake row is `{"timestamp": ms, "input_length": int, "output_length": int, "hash_ids": [int]}`,
where each hash id names one block of the prompt (prefix hashes; the last block may be partial, so
`len(hash_ids) == ceil(input_length / block_size)`). Our export adds `session_id` and `round` (and
`delay`, ms of tool latency, when non-zero), which import reads back.

Sessions come in two layouts, detected per session (`session_layout`): whole (ours: each row is the
round's whole prompt) and delta (AIPerf's `mooncake_trace` sessions: the first row carries `timestamp`
and its whole prompt, later rows `delay`, ms after the previous round ends, and only the new input, the
earlier inputs and outputs implied). Export writes either.

Plain rows carry no session: import infers agents from prefix chains. A request continues an earlier
request's session when its hash ids start with *all* of that request's full blocks (at least 2: block 0
is a system prompt shared by every request of the conversation trace), that request has no
continuation yet, and its input holds the earlier input plus output; otherwise it starts a new agent.
Such traces are marked `agents: inferred`, and their cached tokens come from the hash ids (an infinite
prefix cache), not from the client-side context rule; they keep each row's position in the file
(`source_row`), so that rows of equal timestamps are served and exported back in the file's order.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pyarrow as pa

from traces.errors import InputError
from traces.io import INT64_MAX, INT64_MIN, MOONCAKE_KEYS, IdTypes, atomic_path, finite_number, id_text, json_lines
from traces.schema import DEFAULT_BLOCK_SIZE, MAX_TOKENS, Trace, arrow_schema, validate_table

FIELDS = MOONCAKE_KEYS
MIN_CHAIN_BLOCKS = 2


# ----- parsing ------------------------------------------------------------------------------------
def checked_hash_ids(obj: dict, block_size: int, err) -> list:
    """A row's `hash_ids`: 64-bit integers, one per block of its `input_length` (else `err(field, problem)`)."""
    ids = obj["hash_ids"]
    if not isinstance(ids, list) or any(isinstance(x, bool) or not isinstance(x, int) or not INT64_MIN <= x <= INT64_MAX
                                        for x in ids):
        raise err("hash_ids", "expected a list of 64-bit integers")
    want = -(-obj["input_length"] // block_size)
    if len(ids) != want:
        raise err("hash_ids", f"has {len(ids)} ids, expected ceil(input_length {obj['input_length']} / "
                              f"block size {block_size}) = {want}")
    return ids


def parse_row(obj, block_size: int, path: str | None = None, line: int | None = None) -> dict:
    """Validate one decoded Mooncake row; raise `FILE:LINE: FIELD: problem` on anything wrong."""
    def err(field, problem):
        return InputError(problem, path=path, line=line, field=field)

    if not isinstance(obj, dict):
        raise err(None, "expected a JSON object")
    in_session = "session_id" in obj
    for f in FIELDS:
        if f not in obj and not (f == "timestamp" and in_session):  # delta rows after a session's first
            raise err(f, "missing field")
    ts = obj.get("timestamp")
    if ts is not None or not in_session:
        if not finite_number(ts):
            raise err("timestamp", f"expected a finite number of milliseconds, got {ts!r}")
        if ts < 0:
            raise err("timestamp", f"negative timestamp {ts}")
    for f in ("input_length", "output_length"):
        v = obj[f]
        if isinstance(v, bool) or not isinstance(v, int):
            raise err(f, f"expected an integer, got {v!r}")
        if v < 0:
            raise err(f, f"negative length {v}")
        if v > INT64_MAX:
            raise err(f, f"too large ({v})")
        if v > MAX_TOKENS:
            raise err(f, f"too large ({v} tokens; at most 2^40 per request)")
    if obj["input_length"] == 0 and not in_session:  # a delta row may add nothing (checked per session)
        raise err("input_length", "a request needs at least one prompt token")
    ids = checked_hash_ids(obj, block_size, err)
    row = {"timestamp": None if ts is None else float(ts), "input_length": obj["input_length"],
           "output_length": obj["output_length"], "hash_ids": ids}
    if in_session or "round" in obj:
        sid, rnd = obj.get("session_id"), obj.get("round")
        if sid is None or isinstance(sid, bool) or not isinstance(sid, (str, int)):
            raise err("session_id", f"expected a string or integer with 'round', got {sid!r}")
        sid = id_text(sid, path, line, "session_id")
        if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or not 0 <= rnd <= INT64_MAX):
            raise err("round", f"expected an integer >= 0, got {rnd!r}")
        row["session_id"], row["round"] = sid, rnd
    delay = obj.get("delay", 0)
    if not finite_number(delay) or delay < 0:
        raise err("delay", f"expected a finite number of milliseconds >= 0, got {delay!r}")
    row["delay"] = float(delay)
    return row


def read_rows(path: str, block_size: int) -> list[dict]:
    rows = []
    id_types = IdTypes("session_id")
    for lineno, obj in json_lines(path):
        row = parse_row(obj, block_size, path, lineno)
        if "session_id" in row:
            id_types.see(obj["session_id"], path, lineno)
        row["line"] = lineno
        rows.append(row)
    if not rows:
        raise InputError("no rows", path=path)
    keyed = sum("session_id" in r for r in rows)
    if 0 < keyed < len(rows):
        bad = next(r for r in rows if "session_id" not in r)
        raise InputError("some rows carry session_id/round and this one does not", path=path,
                         line=bad["line"], field="session_id")
    return rows


# ----- import -------------------------------------------------------------------------------------
LAYOUTS = ("auto", "whole", "delta")


def import_mooncake(path: str, *, block_size: int | None = None, layout: str = "auto") -> Trace:
    """Mooncake rows as a trace. Sessions are read in the layout `layout`, or, with `auto`, in the one
    each session's rows show (see `session_layout`); plain rows (no session_id) are whole prompts."""
    bs = block_size or DEFAULT_BLOCK_SIZE
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (allowed: {', '.join(LAYOUTS)})", field="--layout")
    path = str(path)
    rows = read_rows(path, bs)
    if "session_id" in rows[0]:
        agent_rows = _known_sessions(rows, path)
        agents = "known"
    else:
        if layout == "delta":
            raise InputError("delta rows need a session_id (these rows have none: they are whole prompts)",
                             path=path, line=rows[0]["line"], field="--layout")
        agent_rows = _infer_sessions(rows, bs)
        agents = "inferred"
    new_id = itertools.count(max((max(r["hash_ids"], default=-1) for r in rows), default=-1) + 1)
    ids, rnd, app, gen, tool, arr, hashes, lines = [], [], [], [], [], [], [], []
    for a, chain in enumerate(agent_rows):
        name = rows[chain[0]]["session_id"] if agents == "known" else f"s{a:05d}"
        delta = session_layout(rows, chain, bs) == "delta" if layout == "auto" else layout == "delta"
        first = rows[chain[0]]
        if first["input_length"] == 0:
            raise InputError("a session's first request needs at least one prompt token", path=path,
                             line=first["line"], field="input_length")
        start = first["timestamp"] or 0.0
        context = 0
        prompts = []
        for r, i in enumerate(chain):
            row = rows[i]
            if delta:
                append = row["input_length"]
            else:
                append = row["input_length"] - context
                if append < 0:
                    raise InputError(f"{row['input_length']} is shorter than the session's context so far "
                                     f"({context} = previous input + output; rows of whole prompts: "
                                     "--layout delta reads each row's input as new)", path=path,
                                     line=row["line"], field="input_length")
            ids.append(name)
            rnd.append(r)
            app.append(append)
            gen.append(row["output_length"])
            tool.append(row["delay"] / 1000.0 if r > 0 else 0.0)
            arr.append((start if row["timestamp"] is None else row["timestamp"]) / 1000.0)
            lines.append(row["line"])
            prompts.append(context + append)
            context += append + row["output_length"]
        if delta:
            hashes.extend(delta_prompt_ids(first["hash_ids"], first["input_length"], prompts, bs, new_id))
        else:
            hashes.extend(rows[i]["hash_ids"] for i in chain)
    if hashes and max((max(h, default=0) for h in hashes), default=0) > INT64_MAX:
        raise InputError("hash ids too large to number the blocks of delta sessions after them", path=path,
                         field="hash_ids")
    cols = {"agent_id": ids, "round": rnd, "append_tokens": app, "gen_tokens": gen, "tool_latency_s": tool}
    # Timestamps are kept, all of them 0 included, except in rows with sessions whose timestamps are all 0:
    # that is what our export writes for a trace without timestamps, which so imports back as it was.
    if agents == "inferred" or any(a > 0 for a in arr):
        cols["arrival_s"] = arr
    cols["hash_ids"] = hashes
    if agents == "inferred":  # the file's row order, for rounds of equal timestamps (exported back in it)
        cols["source_row"] = [i for chain in agent_rows for i in chain]
    meta = {"block_size": bs, "source": f"mooncake:{os.path.basename(path)}", "agents": agents,
            "generator": "dualpath-bench traces.mooncake import"}
    table = pa.table({c: v for c, v in cols.items()}, schema=arrow_schema(list(cols), meta))
    try:
        table = validate_table(table, path, lines=lines, block_size=bs)
    except InputError as exc:  # name the file's field, not ours
        raise InputError(exc.problem, path=exc.path, line=exc.line,
                         field=MOONCAKE_FIELD.get(exc.field, exc.field)) from None
    return Trace(table, meta)


MOONCAKE_FIELD = {"agent_id": "session_id", "append_tokens": "input_length", "gen_tokens": "output_length",
                  "tool_latency_s": "delay", "arrival_s": "timestamp"}


def session_layout(rows: list[dict], chain: list[int], block_size: int) -> str:
    """`delta` (AIPerf's: each row's input and hash ids are the new input only, the history implied) or
    `whole` (ours: each row is the whole prompt). A session is delta when a later row has no timestamp
    (AIPerf writes `delay` instead), or when a row does not extend the one before it: its input shorter
    than the previous input plus output, or its hash ids not starting with the previous row's full blocks."""
    for prev, i in zip(chain, chain[1:]):
        p, row = rows[prev], rows[i]
        if row["timestamp"] is None:
            return "delta"
        if row["input_length"] < p["input_length"] + p["output_length"]:
            return "delta"
        full = p["input_length"] // block_size
        if row["hash_ids"][:full] != p["hash_ids"][:full]:
            return "delta"
    return "whole"


def delta_prompt_ids(first_ids: list[int], first_input: int, prompts: list[int], block_size: int,
                     new_id) -> list[list[int]]:
    """Whole-prompt hash ids of a delta session's rounds: the first row's ids (its input is its whole
    prompt), whose full blocks start every later prompt; the other full blocks get ids of the session's
    own (kept in every later round) and a partial last block one of its own, all from `new_id`."""
    full = list(first_ids[:first_input // block_size])
    out = [list(first_ids)]
    for prompt in prompts[1:]:
        n_full = prompt // block_size
        while len(full) < n_full:
            full.append(next(new_id))
        out.append(full[:n_full] + ([next(new_id)] if prompt % block_size else []))
    return out


def _known_sessions(rows: list[dict], path: str) -> list[list[int]]:
    """Rows of each session, by `round` where the rows give it, else in file order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["session_id"], []).append(i)
    out = []
    for sid, idx in groups.items():
        numbered = [rows[i]["round"] is not None for i in idx]
        if any(numbered) and not all(numbered):
            bad = idx[numbered.index(not numbered[0])]
            raise InputError(f"session {sid!r} gives round on some rows only (give it on all or none)",
                             path=path, line=rows[bad]["line"], field="round")
        if all(numbered):
            idx.sort(key=lambda i: rows[i]["round"])
            for expected, i in enumerate(idx):
                if rows[i]["round"] != expected:
                    raise InputError(f"session {sid!r} has round {rows[i]['round']} where round {expected} "
                                     "was expected (rounds must be 0, 1, 2, ... without gaps or repeats)",
                                     path=path, line=rows[i]["line"], field="round")
        out.append(idx)
    return out


def _infer_sessions(rows: list[dict], block_size: int) -> list[list[int]]:
    """Chains of requests, each continuing the deepest earlier request whose full blocks it extends (and
    whose input plus output its input holds)."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["timestamp"])  # stable: file order on ties
    trie: dict[tuple[int, int], int] = {}
    owner: dict[int, int] = {}  # trie node -> latest row whose full-block prefix ends there
    continued: set[int] = set()
    chain_of: dict[int, int] = {}
    chains: list[list[int]] = []
    for i in order:
        ids = rows[i]["hash_ids"]
        node, parent = 0, -1
        path_nodes = []
        for h in ids:
            nxt = trie.get((node, h))
            if nxt is None:
                break
            node = nxt
            path_nodes.append(node)
        for d in range(len(path_nodes), MIN_CHAIN_BLOCKS - 1, -1):
            cand = owner.get(path_nodes[d - 1])
            if cand is not None and cand not in continued:
                p = rows[cand]
                if rows[i]["input_length"] >= p["input_length"] + p["output_length"]:
                    parent = cand
                    break  # else a shallower request may still be the one this continues
        # insert the rest of this request's blocks, remember where its full-block prefix ends
        node = path_nodes[-1] if path_nodes else 0
        for h in ids[len(path_nodes):]:
            nxt = len(trie) + 1
            trie[(node, h)] = nxt
            node = nxt
            path_nodes.append(node)
        n_full = rows[i]["input_length"] // block_size
        if n_full >= MIN_CHAIN_BLOCKS:
            owner[path_nodes[n_full - 1]] = i
        if parent >= 0:
            continued.add(parent)
            chain_of[i] = chain_of[parent]
            chains[chain_of[i]].append(i)
        else:
            chain_of[i] = len(chains)
            chains.append([i])
    return chains


# ----- export -------------------------------------------------------------------------------------
def export_hash_ids(trace: Trace, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Prefix-block hash ids of every round's whole prompt: (offsets, values).

    A full block of an agent's prompt keeps its id in every later round (its tokens never change);
    a partial last block gets an id of its own (the next round fills it with other tokens).
    """
    prompt = trace.prompt_tokens()
    agent = trace.agent_index()
    n_full = prompt // block_size
    partial = (prompt % block_size) > 0
    per_agent_full = np.zeros(int(agent[-1]) + 1, dtype=np.int64)
    np.maximum.at(per_agent_full, agent, n_full)
    base = np.concatenate(([0], np.cumsum(per_agent_full)[:-1]))
    partial_base = int(per_agent_full.sum())
    lengths = n_full + partial
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    total = int(offsets[-1])
    values = np.empty(total, dtype=np.int64)
    row_of = np.repeat(np.arange(len(prompt)), lengths)
    pos = np.arange(total) - offsets[:-1][row_of]
    is_partial = pos >= n_full[row_of]
    values[~is_partial] = base[agent[row_of[~is_partial]]] + pos[~is_partial]
    values[is_partial] = partial_base + row_of[is_partial]
    return offsets, values


def export_mooncake(trace: Trace, path: str, *, block_size: int | None = None, layout: str = "whole") -> None:
    """Write Mooncake rows. Hash ids the trace already carries are kept (at its own block size); others
    are derived. `whole` (ours): every row is the round's whole prompt; rows of known agents carry
    session_id and round, and a trace whose agents were inferred is written back as plain rows in
    timestamp order, as it came (rows of equal timestamps in the order of the file it was imported from).
    `delta` (AIPerf's `mooncake_trace` sessions): each agent is a session whose first row carries
    `timestamp` and its whole prompt, and whose later rows carry `delay` (ms after the previous round
    ends) and only the new input, with hash ids of its own blocks."""
    bs = block_size or trace.block_size
    if not str(path).endswith(".jsonl"):
        raise InputError("Mooncake output must end in .jsonl", field="-o")
    if layout not in ("whole", "delta"):
        raise InputError(f"unknown layout {layout!r} (allowed: whole, delta)", field="--layout")
    ids = trace.table.column("hash_ids").combine_chunks() if trace.has("hash_ids") else None
    if ids is not None and ids.null_count == 0 and bs == trace.block_size:
        offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
    else:
        offsets, values = export_hash_ids(trace, bs)
    if layout == "delta":
        _write_delta(trace, path, bs, offsets.tolist(), values.tolist())
        return
    sessions = trace.agents_known
    order = trace.arrival_order() if not sessions and trace.has("arrival_s") else None
    prompt = trace.prompt_tokens().tolist()
    gen = trace.col("gen_tokens").tolist()
    agent = trace.col("agent_id").tolist()
    rnd = trace.col("round").tolist()
    tool = trace.col("tool_latency_s").tolist()
    arrival = trace.col("arrival_s").tolist() if trace.has("arrival_s") else None
    vals = values.tolist()
    off = offsets.tolist()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i in (range(len(prompt)) if order is None else order.tolist()):
            row = {"timestamp": _ms(arrival[i]) if arrival else 0,
                   "input_length": prompt[i], "output_length": gen[i], "hash_ids": vals[off[i]:off[i + 1]]}
            if sessions:
                row["session_id"], row["round"] = agent[i], rnd[i]
            if tool[i] > 0:
                row["delay"] = _ms(tool[i])
            fh.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")


def _write_delta(trace: Trace, path: str, bs: int, off: list[int], vals: list[int]) -> None:
    """The delta layout: sessions in the trace's agent order, rounds in order; a later round's new input
    gets fresh hash ids, numbered after every id of the whole prompts."""
    append = trace.col("append_tokens").tolist()
    prompt = trace.prompt_tokens().tolist()
    gen = trace.col("gen_tokens").tolist()
    agent = trace.col("agent_id").tolist()
    rnd = trace.col("round").tolist()
    tool = trace.col("tool_latency_s").tolist()
    arrival = trace.col("arrival_s").tolist() if trace.has("arrival_s") else None
    new_id = itertools.count(max(vals, default=-1) + 1)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i in range(len(prompt)):
            if rnd[i] == 0:
                row = {"session_id": agent[i], "timestamp": _ms(arrival[i]) if arrival else 0,
                       "input_length": prompt[i], "output_length": gen[i], "hash_ids": vals[off[i]:off[i + 1]]}
            else:
                row = {"session_id": agent[i], "delay": _ms(tool[i]), "input_length": append[i],
                       "output_length": gen[i], "hash_ids": [next(new_id) for _ in range(-(-append[i] // bs))]}
            fh.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")


def _ms(seconds: float) -> int | float:
    """Milliseconds to 3 decimals; whole numbers as integers (as Mooncake writes them)."""
    ms = round(seconds * 1000.0, 3)
    return int(ms) if ms.is_integer() else ms
