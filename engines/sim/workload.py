"""The trace as the simulator replays it: per-round arrays and the send-time rules.

Open loop across agents (each agent's first round at its start time), closed loop inside an agent:
round r+1 is sent when round r is done plus round r+1's tool latency, and, in trace-timestamp replay,
not before the round's own (scaled) timestamp.
"""
from __future__ import annotations

import numpy as np

from traces.schema import Trace


class Workload:
    def __init__(self, trace: Trace, start_s: np.ndarray, not_before_s: np.ndarray | None = None,
                 hit_granularity: int = 1):
        self.trace = trace
        self.prompt = trace.prompt_tokens()
        self.hit = trace.expected_cached_tokens()
        if hit_granularity > 1:  # a store of whole blocks holds the prefix's full blocks only
            self.hit = self.hit // hit_granularity * hit_granularity
        self.gen = trace.col("gen_tokens")
        self.tool = trace.col("tool_latency_s")
        starts = trace.agent_starts()
        self.offsets = np.append(starts, len(self.prompt))
        self.rounds = np.diff(self.offsets)
        self.agents = len(starts)
        self.agent_ids = trace.col("agent_id")[starts]
        self.start_s = np.asarray(start_s, dtype=float)
        if len(self.start_s) != self.agents:
            raise ValueError("one start time per agent is needed")
        self.not_before = not_before_s
        self.hit_mean = float(self.hit.mean()) if len(self.hit) else 0.0
        self.new_mean = float((self.prompt - self.hit).mean()) if len(self.hit) else 0.0
        # plain Python lists: faster element access in the event handlers
        self.prompt, self.hit, self.gen = self.prompt.tolist(), self.hit.tolist(), self.gen.tolist()
        self.tool = self.tool.tolist()
        self.offsets = self.offsets.tolist()
        self.rounds = self.rounds.tolist()

    def first_send(self, a: int) -> float:
        t = float(self.start_s[a])
        if self.not_before is not None:
            t = max(t, float(self.not_before[self.offsets[a]]))
        return t

    def next_send(self, a: int, r: int, t_done: float) -> float:
        i = self.offsets[a] + r
        t = t_done + self.tool[i]
        if self.not_before is not None:
            t = max(t, float(self.not_before[i]))
        return t

    def row(self, a: int, r: int) -> int:
        return self.offsets[a] + r
