"""The live engines' step logs (engines/live/steps.py) as `engines` rows (harness/live_engines.py): prefill
steps one row each on the run's clock, decode engines sampled once per telemetry window like the
simulator's, steps outside the run left out, and the columns the results writer accepts."""
from __future__ import annotations

import math

import pytest

from engines.live.steps import StepLog
from harness.live_engines import rows
from harness.results import to_table

T0 = 1000.0  # the run's start on the host's monotonic clock


def answer(role: str, engine: str, steps) -> dict:
    """A `GET /steps` body: steps = [(t since the run's start, seconds, requests, tokens, context)]."""
    log = StepLog()
    for t, s, n, tok, ctx in steps:
        log.add(T0 + t, n, tok, ctx, t1=T0 + t + s)
    return log.answer(role, engine)


def test_prefill_steps_are_one_row_each_on_the_runs_clock():
    pe = answer("prefill", "pe0", [(-0.5, 0.1, 1, 64, 0), (0.2, 0.05, 2, 300, 0), (3.9, 0.2, 1, 10, 0), (4.5, 0.1, 1, 5, 0)])
    out = rows("basic", [pe], T0, 4.0, 1.0)
    assert out["t"] == pytest.approx([0.2, 3.9])  # before the run's start and after its end: left out
    assert out["step_s"] == pytest.approx([0.05, 0.2])
    assert out["batch_requests"] == [2, 1] and out["batch_tokens"] == [300, 10]
    assert out["role"] == ["prefill"] * 2 and out["engine"] == ["pe0"] * 2 and out["group"] == [0, 0]
    assert all(math.isnan(a) for a in out["attention_s"]) and out["queued_tokens"] == [None, None]


def test_a_decode_engine_is_sampled_at_each_window_start():
    de = answer("decode", "de1", [
        (0.95, 0.1, 3, 3, 900),   # covers t = 1.0
        (1.92, 0.05, 2, 2, 500),  # ended at 1.97, less than a step before t = 2.0: still decoding
        (2.5, 0.01, 1, 1, 100),   # ended at 2.51; t = 3.0 is 49 steps later: idle
    ])
    out = rows("dualpath", [de], T0, 3.5, 1.0)
    assert out["t"] == [0.0, 1.0, 2.0, 3.0]
    assert out["batch_requests"] == [0, 3, 2, 0]
    assert out["batch_tokens"] == [0, 900, 500, 0] and out["queued_tokens"] == [0, 900, 500, 0]
    assert out["step_s"] == pytest.approx([0.0, 0.1, 0.05, 0.0])
    assert out["role"] == ["decode"] * 4 and out["group"] == [1] * 4


def test_the_rows_are_what_the_results_writer_takes():
    pe = answer("prefill", "pe0", [(0.1, 0.02, 1, 64, 0)])
    de = answer("decode", "de0", [(0.0, 0.01, 1, 1, 64)])
    table = to_table("engines", rows("basic", [de, pe], T0, 1.0, 0.5), "basic")
    assert table.num_rows == 1 + 3 and table.column("engine").to_pylist() == ["de0"] * 3 + ["pe0"]


def test_the_log_keeps_at_most_its_rows_and_counts_the_rest():
    log = StepLog(max_rows=2)
    for i in range(5):
        log.add(float(i), 1, 1, t1=i + 0.5)
    body = log.answer("decode", "de0")
    assert body["t"] == [0.0, 1.0] and body["step_s"] == [0.5, 0.5] and body["dropped"] == 3
