"""When each agent starts (open loop across agents) and, in trace replay, when each round may be sent.

Modes (scenario `arrival.mode`): `offline` (every agent at t=0, the RL-rollout batch), `poisson`
(rate `rate_aps` agents/s), `gamma` (same rate, burstiness `shape`: 1 is Poisson, below 1 burstier),
`constant` (evenly spaced), `trace` (the trace's own timestamps times `time_scale`; a round is sent at
its timestamp or when the agent's previous round ends plus its tool latency, whichever is later).
The first agent starts at t=0 in every mode; the same seed gives the same schedule.
"""
from __future__ import annotations

import numpy as np

from traces.errors import InputError
from traces.schema import Trace

MODES = ("offline", "poisson", "gamma", "constant", "trace")


def agent_start_times(arrival: dict, agents: int, seed: int) -> np.ndarray:
    mode = arrival.get("mode", "offline")
    if mode not in MODES:
        raise InputError(f"unknown arrival mode {mode!r} (allowed: {', '.join(MODES)})", field="arrival.mode")
    if mode == "offline" or agents == 0:
        return np.zeros(agents)
    if mode == "trace":
        raise InputError("trace arrivals come from the trace (use trace_schedule)", field="arrival.mode")
    rate = arrival.get("rate_aps")
    if not rate or rate <= 0:
        raise InputError(f"arrival mode {mode!r} needs rate_aps > 0", field="arrival.rate_aps")
    rng = np.random.default_rng(arrival.get("seed", seed))
    if mode == "constant":
        gaps = np.full(agents - 1, 1.0 / rate)
    elif mode == "poisson":
        gaps = rng.exponential(1.0 / rate, agents - 1)
    else:
        shape = float(arrival.get("shape", 1.0))
        if shape <= 0:
            raise InputError("gamma shape must be > 0", field="arrival.shape")
        gaps = rng.gamma(shape, 1.0 / (rate * shape), agents - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def trace_schedule(trace: Trace, time_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(agent start times, per-round not-before times) from the trace's timestamps, shifted to t=0."""
    if not trace.has("arrival_s"):
        raise InputError("arrival mode 'trace' needs a trace with timestamps (arrival_s)", field="arrival.mode")
    if time_scale <= 0:
        raise InputError("must be > 0", field="arrival.time_scale")
    t = trace.col("arrival_s").astype(float)
    t = (t - t.min()) * time_scale
    return t[trace.agent_starts()], t


def schedule(arrival: dict, trace: Trace, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(agent start times, per-round not-before times or None) for any mode."""
    if arrival.get("mode", "offline") == "trace":
        return trace_schedule(trace, float(arrival.get("time_scale", 1.0)))
    return agent_start_times(arrival, len(trace.agent_starts()), seed), None
