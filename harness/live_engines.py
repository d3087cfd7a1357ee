"""The live cluster's compute steps as `engines.parquet` rows, written the way the simulator writes them.

Each engine logs its steps (engines/live/steps.py) and answers them at `GET /steps` once the run is over.
As in the simulator (engines/sim/records.py): a prefill engine gets one row per step (with `compute:
torch`, one layer of one request; modeled, one step of its batch), at the step's start, with its seconds;
a decode engine is sampled once per telemetry window (its batch and step at that instant: the step in
progress, or the last one if it ended less than a step ago, else idle), so the attribution's `pe_compute`
and `de_compute` mean the same on both backends. Times are on the driver's clock (the host's monotonic
clock less the run's start); steps before it (none: the engines warm up inside their compute process) and
after the run's end are left out. Unknown columns (a live PE's attention seconds, queued and read-queue
tokens) are null.
"""
from __future__ import annotations

import asyncio
import math

import aiohttp
import numpy as np

from engines.contract import ENGINE_COLUMNS


def empty() -> dict[str, list]:
    return {c: [] for c in ENGINE_COLUMNS}


async def fetch(urls: dict[str, str], timeout_s: float = 10.0) -> list[dict]:
    """Every engine's `GET /steps` (`urls`: name -> the engine's base URL); an engine that does not answer
    is left out (its rows are lost, the run's are not)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async def one(url):
            try:
                async with s.get(url + "/steps") as r:
                    return await r.json() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None
        answers = await asyncio.gather(*(one(u) for u in urls.values()))
    return [a for a in answers if a]


def rows(system: str, answers: list[dict], t0: float, t_end: float, window_s: float) -> dict[str, list]:
    """`engines` columns from the engines' answers; `t0`: the run's start on the host's monotonic clock
    (perf_counter seconds); `t_end`: the run's length."""
    out = empty()

    def add(t, engine, role, n, tokens, attention, step, queued, group):
        for c, v in zip(("system", "t", "engine", "role", "batch_requests", "batch_tokens", "attention_s",
                         "step_s", "queued_tokens", "read_queue_tokens", "group"),
                        (system, t, engine, role, n, tokens, attention, step, queued, None, group)):
            out[c].append(v)

    for a in sorted(answers, key=lambda a: a["engine"]):
        t = np.asarray(a["t"], dtype=float) - t0
        step = np.asarray(a["step_s"], dtype=float)
        n, tokens, ctx = a["batch_requests"], a["batch_tokens"], a["ctx_tokens"]
        group = int("".join(ch for ch in a["engine"] if ch.isdigit()) or 0)
        if a["role"] == "prefill":
            for i in np.nonzero((t >= 0) & (t <= t_end))[0]:
                add(float(t[i]), a["engine"], "prefill", int(n[i]), int(tokens[i]), math.nan, float(step[i]),
                    None, group)
            continue
        for k in range(int(t_end // window_s) + 1):  # decode: sampled at every window's start
            at = k * window_s
            i = int(np.searchsorted(t, at, side="right")) - 1  # the last step started by then
            if i >= 0 and at - (t[i] + step[i]) < step[i]:
                add(at, a["engine"], "decode", int(n[i]), int(ctx[i]), math.nan, float(step[i]), int(ctx[i]), group)
            else:
                add(at, a["engine"], "decode", 0, 0, math.nan, 0.0, 0, group)
    return out
