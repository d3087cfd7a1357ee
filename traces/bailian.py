"""Alibaba Bailian usage traces (alibaba-edu/qwen-bailian-usagetraces-anon, Apache-2.0) as our traces.

A row is one request: `{"chat_id", "parent_chat_id" (-1 for a root), "timestamp" (s), "input_length",
"output_length", "type" (text, search, image, file), "turn", "hash_ids"}`, the hash ids naming 16-token
blocks of the whole prompt. Sessions are rebuilt from the parent links, in timestamp order (file order on
ties): a request continues its parent's agent when it is the parent's first child to do so and its input
holds the parent's input plus output; any other child (a second branch, a regenerated answer, a history
trimmed by the client) starts an agent of its own, whose prefix shared with its parent still counts as
cached through the hash ids (`agents: linked`: cached tokens are the larger of the agent's context and the
leading blocks an infinite cache has seen).
"""
from __future__ import annotations

import os

import pyarrow as pa

from traces.errors import InputError
from traces.io import IdTypes, finite_number, id_text, json_lines
from traces.mooncake import checked_hash_ids
from traces.schema import MAX_TOKENS, Trace, arrow_schema, validate_table

BLOCK_SIZE = 16
REQUIRED = ("chat_id", "parent_chat_id", "timestamp", "input_length", "output_length", "hash_ids")
BAILIAN_FIELD = {"agent_id": "chat_id", "append_tokens": "input_length", "gen_tokens": "output_length",
                 "arrival_s": "timestamp"}
ROOT = "-1"


def parse_row(obj, block_size: int, path: str | None = None, line: int | None = None) -> dict:
    """Validate one decoded Bailian row; raise `FILE:LINE: FIELD: problem` on anything wrong."""
    def err(field, problem):
        return InputError(problem, path=path, line=line, field=field)

    if not isinstance(obj, dict):
        raise err(None, "expected a JSON object")
    for f in REQUIRED:
        if f not in obj:
            raise err(f, "missing field")
    chat, parent = id_text(obj["chat_id"], path, line, "chat_id"), id_text(obj["parent_chat_id"], path, line,
                                                                          "parent_chat_id")
    if chat == parent:
        raise err("parent_chat_id", f"a chat cannot be its own parent ({chat})")
    ts = obj["timestamp"]
    if not finite_number(ts) or ts < 0:
        raise err("timestamp", f"expected a finite number of seconds >= 0, got {ts!r}")
    for f in ("input_length", "output_length"):
        v = obj[f]
        if isinstance(v, bool) or not isinstance(v, int):
            raise err(f, f"expected an integer, got {v!r}")
        if not 0 <= v <= MAX_TOKENS:
            raise err(f, f"expected 0 to 2^40 tokens, got {v}")
    if obj["input_length"] == 0:
        raise err("input_length", "a request needs at least one prompt token")
    ids = checked_hash_ids(obj, block_size, err)
    turn = obj.get("turn")
    if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 0):
        raise err("turn", f"expected an integer >= 0, got {turn!r}")
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        raise err("type", f"expected a string, got {kind!r}")
    return {"chat_id": chat, "parent": parent, "timestamp": float(ts), "input_length": obj["input_length"],
            "output_length": obj["output_length"], "hash_ids": ids}


def read_rows(path: str, block_size: int) -> list[dict]:
    rows = []
    ids = IdTypes("chat_id")
    seen: dict[str, int] = {}
    for lineno, obj in json_lines(path):
        row = parse_row(obj, block_size, path, lineno)
        ids.see(obj["chat_id"], path, lineno)
        if row["chat_id"] in seen:
            raise InputError(f"chat {row['chat_id']} appears twice (first on line {seen[row['chat_id']]})",
                             path=path, line=lineno, field="chat_id")
        seen[row["chat_id"]] = lineno
        row["line"] = lineno
        rows.append(row)
    if not rows:
        raise InputError("no rows", path=path)
    return rows


def link_sessions(rows: list[dict]) -> list[list[int]]:
    """Agents as chains of row indices, from the parent links (see the module docstring)."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["timestamp"])  # stable: file order on ties
    by_chat: dict[str, int] = {}
    continued: set[int] = set()
    chain_of: dict[int, int] = {}
    chains: list[list[int]] = []
    for i in order:
        row = rows[i]
        parent = by_chat.get(row["parent"]) if row["parent"] != ROOT else None
        if parent is not None and parent not in continued and \
                row["input_length"] >= rows[parent]["input_length"] + rows[parent]["output_length"]:
            continued.add(parent)
            chain_of[i] = chain_of[parent]
            chains[chain_of[i]].append(i)
        else:
            chain_of[i] = len(chains)
            chains.append([i])
        by_chat[row["chat_id"]] = i
    return chains


def import_bailian(path: str, *, block_size: int | None = None) -> Trace:
    bs = block_size or BLOCK_SIZE
    path = str(path)
    rows = read_rows(path, bs)
    chains = link_sessions(rows)
    ids, rnd, app, gen, arr, hashes, lines, source = [], [], [], [], [], [], [], []
    for chain in chains:
        name = rows[chain[0]]["chat_id"]
        context = 0
        for r, i in enumerate(chain):
            row = rows[i]
            ids.append(name)
            rnd.append(r)
            app.append(row["input_length"] - context)
            gen.append(row["output_length"])
            arr.append(row["timestamp"])
            hashes.append(row["hash_ids"])
            lines.append(row["line"])
            source.append(i)
            context = row["input_length"] + row["output_length"]
    cols = {"agent_id": ids, "round": rnd, "append_tokens": app, "gen_tokens": gen,
            "tool_latency_s": [0.0] * len(ids), "arrival_s": arr, "hash_ids": hashes, "source_row": source}
    meta = {"block_size": bs, "source": f"bailian:{os.path.basename(path)}", "agents": "linked",
            "generator": "dualpath-bench traces.bailian import"}
    table = pa.table(cols, schema=arrow_schema(list(cols), meta))
    try:
        table = validate_table(table, path, lines=lines, block_size=bs)
    except InputError as exc:  # name the file's field, not ours
        raise InputError(exc.problem, path=exc.path, line=exc.line,
                         field=BAILIAN_FIELD.get(exc.field, exc.field)) from None
    return Trace(table, meta)
