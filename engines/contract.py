"""The results contract (DESIGN.md "Contracts"): every table's columns, their types and allowed values,
the system and backend names, and how bytes are spread over telemetry windows. One definition,
imported by every writer (the simulator's recorder, the harness's results writer, the Prometheus
scraper) and every reader.

Types are named here ("float64", "int64", "string", "list<float64>") and mapped to Arrow by the
results writer, so that engines stay free of I/O libraries.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

F64, I64, STR, F64_LIST = "float64", "int64", "string", "list<float64>"

COLUMNS: dict[str, dict[str, str]] = {
    "requests": {
        "system": STR, "agent_id": STR, "round": I64,
        "t_scheduled": F64, "t_sent": F64, "t_first_token": F64, "t_second_token": F64, "t_done": F64,
        "prompt_tokens": I64, "expected_cached_tokens": I64, "cached_tokens": I64, "output_tokens": I64,
        "pe": STR, "de": STR, "read_side": STR, "read_bytes": I64,
        "queue_s": F64, "alloc_s": F64, "read_s": F64, "prefill_s": F64, "kv_transfer_s": F64,
        "status": STR, "error": STR,
        # added for endpoints we drive (null for the simulator), so every backend's files share one schema:
        "t_dispatched": F64, "itl_s": F64_LIST, "server_prompt_tokens": I64, "tokens_from": STR,
        "http_status": I64, "max_tokens": I64,  # the output length asked for (null: the simulator's is exact)
        "output_digest": STR,  # output_digest() of the generated token ids, where the server returned them
    },
    "agents": {"system": STR, "agent_id": STR, "t_arrival": F64, "t_done": F64, "rounds": I64,
               "jct_s": F64, "status": STR},
    "links": {"system": STR, "t_start": F64, "t_end": F64, "node": STR, "link": STR, "direction": STR,
              "bytes": I64, "traffic": STR},
    "engines": {"system": STR, "t": F64, "engine": STR, "role": STR, "batch_requests": I64,
                "batch_tokens": I64, "attention_s": F64, "step_s": F64, "queued_tokens": I64,
                "read_queue_tokens": I64,
                "group": I64},  # added: the engine group (engines of a group step together; null for http)
}
TABLES = tuple(COLUMNS)
REQUEST_COLUMNS = tuple(COLUMNS["requests"])
AGENT_COLUMNS = tuple(COLUMNS["agents"])
LINK_COLUMNS = tuple(COLUMNS["links"])
ENGINE_COLUMNS = tuple(COLUMNS["engines"])


def output_digest(token_ids) -> str:
    """A request's generated token ids as 16 hex digits (blake2b), so runs compare token for token."""
    return hashlib.blake2b(",".join(map(str, token_ids)).encode(), digest_size=8).hexdigest()


# added: which of `dualpath run --repeats N`'s runs of the system (from 0), filled in by the results writer
# (the tuples above are what a runtime writes)
for _columns in COLUMNS.values():
    _columns["repeat"] = I64

STATUSES = ("ok", "error", "timeout", "cancelled")          # a request's or an agent's
RUN_STATUSES = ("running", "ok", "interrupted", "error", "aborted")  # a results directory's (aborted: the
                                                                     # endpoint kept failing)
READ_SIDES = ("pe", "de", "none")
DIRECTIONS = ("rx", "tx")
TRAFFIC = ("kv_read", "kv_transfer", "kv_write", "h2d", "other")
ROLES = ("prefill", "decode", "server")  # server: an external endpoint's gauges
BREAKDOWN_COLUMNS = ("queue_s", "alloc_s", "read_s", "prefill_s", "kv_transfer_s")
LINK_NAME = r"snic|dram|cnic\d+|[a-z0-9_:.-]+"  # ours, or a device a Prometheus endpoint reports

# The ablation ladder (DESIGN.md "Systems"); engines/policy/systems.py says what each turns on.
SYSTEMS = ("basic", "layerwise", "dualpath-rr", "dualpath", "oracle")
BACKENDS = ("sim", "http", "live")  # the ones this version runs (live: a local cluster the harness starts)
PLANNED_BACKENDS: dict[str, str] = {}


def window_overlaps(t0: float, t1: float, window_s: float) -> Iterator[tuple[int, float, float]]:
    """(k, start, end) of the part of [t0, t1] inside each window [k w, (k+1) w) it overlaps by more
    than nothing, in order (times >= 0, t1 > t0)."""
    for k in range(int(t0 / window_s), int(t1 / window_s) + 1):
        start, end = max(t0, k * window_s), min(t1, (k + 1) * window_s)
        if end - start > 0:
            yield k, start, end


def spread_whole_bytes(total: int, t0: float, t1: float, window_s: float) -> list[tuple[int, int]]:
    """`total` bytes moved evenly over [t0, t1], as (window index, bytes): whole bytes that sum to
    `total` exactly (each window gets the rounded cumulative share at its end). An interval of no
    length puts everything in the window holding t1."""
    if total == 0:
        return []
    if not t1 > t0:
        return [(math.floor(t1 / window_s), total)]
    windows = list(window_overlaps(t0, t1, window_s))
    out, given = [], 0
    for i, (k, _, end) in enumerate(windows):
        upto = total if i == len(windows) - 1 else round(total * (end - t0) / (t1 - t0))
        if upto != given:
            out.append((k, upto - given))
        given = upto
    return out
