"""Hypothesis: any trace of known agents exported as Mooncake rows in either layout and imported back (the
layout detected per session, or named) gives the same rounds, lengths, tool latencies and hit rates."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.mooncake import export_mooncake, import_mooncake
from traces.schema import Trace, arrow_schema, validate_table
from traces.stats import trace_stats

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def traces(draw):
    """A trace of 1-5 agents of 1-6 rounds; round 0 appends >= 1 token, later rounds >= 0; tool latencies in
    whole ms; with or without timestamps; blocks of 4 to 512 tokens."""
    block = draw(st.sampled_from([4, 16, 64, 512]))
    n_agents = draw(st.integers(1, 5))
    timed = draw(st.booleans())
    cols = {"agent_id": [], "round": [], "append_tokens": [], "gen_tokens": [], "tool_latency_s": []}
    arrival = []
    start = 0
    for a in range(n_agents):
        start += draw(st.integers(0, 5000))
        for r in range(draw(st.integers(1, 6))):
            cols["agent_id"].append(f"agent-{a}")
            cols["round"].append(r)
            cols["append_tokens"].append(draw(st.integers(1 if r == 0 else 0, 3000)))
            cols["gen_tokens"].append(draw(st.integers(0, 700)))
            cols["tool_latency_s"].append(0.0 if r == 0 else draw(st.integers(0, 90_000)) / 1000)
            arrival.append(start / 1000 if r == 0 else (start + 100 * r) / 1000)
    if timed:
        cols["arrival_s"] = arrival
    meta = {"block_size": block, "source": "hypothesis", "agents": "known"}
    table = pa.table(cols, schema=arrow_schema(list(cols), meta))
    return Trace(validate_table(table, block_size=block), meta)


def round_trip(trace: Trace, layout: str, read_as: str) -> tuple[Trace, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.jsonl")
        export_mooncake(trace, path, layout=layout)
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        return import_mooncake(path, block_size=trace.block_size, layout=read_as), rows


def arrivals(trace: Trace) -> list[float]:
    """Timestamps, 0 where there are none (a trace whose timestamps are all 0 comes back without them)."""
    return trace.col("arrival_s").tolist() if trace.has("arrival_s") else [0.0] * trace.num_rounds


def same_rounds(a: Trace, b: Trace) -> None:
    for col in ("agent_id", "round", "append_tokens", "gen_tokens", "tool_latency_s"):
        assert a.col(col).tolist() == b.col(col).tolist(), col
    assert a.prompt_tokens().tolist() == b.prompt_tokens().tolist()
    sa, sb = trace_stats(a), trace_stats(b)
    for key in ("agents", "requests", "hit_rate", "hit_rate_per_request", "context_mean", "total_mean"):
        assert sa[key] == sb[key], key


@SETTINGS
@given(traces(), st.sampled_from(["auto", "whole"]))
def test_whole_layout_round_trip(trace, read_as):
    back, rows = round_trip(trace, "whole", read_as)
    same_rounds(trace, back)
    assert all("timestamp" in r and "round" in r for r in rows)
    assert arrivals(back) == arrivals(trace)
    # every row is the whole prompt: its hash ids cover it
    assert [r["input_length"] for r in rows] == trace.prompt_tokens().tolist()


@SETTINGS
@given(traces(), st.sampled_from(["auto", "delta"]))
def test_delta_layout_round_trip(trace, read_as):
    back, rows = round_trip(trace, "delta", read_as)
    same_rounds(trace, back)
    first = trace.col("round") == 0
    # first rows: timestamp and the whole prompt; later rows: delay and the new input only
    assert all(("timestamp" in r) == f and ("delay" in r) != f for r, f in zip(rows, first.tolist()))
    assert [r["input_length"] for r in rows] == np.where(first, trace.prompt_tokens(),
                                                         trace.col("append_tokens")).tolist()
    bs = trace.block_size
    assert all(len(r["hash_ids"]) == -(-r["input_length"] // bs) for r in rows)
    # a session keeps its start; later rounds are sent when the one before ends
    assert np.array(arrivals(back))[first].tolist() == np.array(arrivals(trace))[first].tolist()
    # the whole prompts rebuilt on import start with the first row's full blocks
    ids = back.table.column("hash_ids").to_pylist()
    starts = np.flatnonzero(first)
    for s, e in zip(starts, list(starts[1:]) + [len(ids)]):
        k = int(trace.prompt_tokens()[s]) // bs
        assert all(ids[i][:k] == ids[s][:k] for i in range(s, e))


@SETTINGS
@given(traces())
def test_delta_export_of_the_import_is_the_same_file(trace):
    """export delta -> import -> export delta gives the same rows; later rounds' new blocks get fresh ids
    again (as many, none seen before)."""
    back, rows = round_trip(trace, "delta", "auto")
    _, again = round_trip(back, "delta", "auto")
    strip = [{k: v for k, v in r.items() if k != "hash_ids" or "timestamp" in r} for r in rows]
    assert [{k: v for k, v in r.items() if k != "hash_ids" or "timestamp" in r} for r in again] == strip
    assert [len(r["hash_ids"]) for r in again] == [len(r["hash_ids"]) for r in rows]
    later = [h for r in again if "delay" in r for h in r["hash_ids"]]
    assert len(set(later)) == len(later)
    assert not set(later) & {h for r in again if "timestamp" in r for h in r["hash_ids"]}
