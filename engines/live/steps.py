"""What a live engine's compute did, step by step, for the `engines` results table.

Each engine appends one row per compute step: a PE's modeled prefill step (engines/live/batcher.py) or,
with `compute: torch`, one layer of one request's prefill; a DE's decode step over its batch. A row is the
step's start (`time.perf_counter()`, the monotonic clock every process of the host shares, so the harness
subtracts its own run start), its seconds, the requests and tokens in it, and the context tokens the DE's
batch held. `GET /steps` answers the columns; the harness turns them into `engines` rows the way the
simulator writes them (harness/live_engines.py). Appends come from the event loop and the compute thread;
`list.append` needs no lock. At most MAX_ROWS rows are kept (then `dropped` counts the rest).
"""
from __future__ import annotations

import time

MAX_ROWS = 1_000_000
COLUMNS = ("t", "step_s", "batch_requests", "batch_tokens", "ctx_tokens")


class StepLog:
    def __init__(self, max_rows: int = MAX_ROWS):
        self.cols: dict[str, list] = {c: [] for c in COLUMNS}
        self.max_rows = max_rows
        self.dropped = 0

    def add(self, t0: float, requests: int, tokens: int, ctx_tokens: int = 0, t1: float | None = None) -> None:
        """A step that started at `t0` (perf_counter) and ended at `t1` (default: now)."""
        if len(self.cols["t"]) >= self.max_rows:
            self.dropped += 1
            return
        step = (time.perf_counter() if t1 is None else t1) - t0
        c = self.cols
        c["t"].append(t0)
        c["step_s"].append(step)
        c["batch_requests"].append(int(requests))
        c["batch_tokens"].append(int(tokens))
        c["ctx_tokens"].append(int(ctx_tokens))

    def answer(self, role: str, name: str) -> dict:
        """The body of `GET /steps`."""
        return {"role": role, "engine": name, "dropped": self.dropped, **{c: list(v) for c, v in self.cols.items()}}
