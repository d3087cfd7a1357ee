"""The trace a scenario replays: synthesised from a preset or read from a file, optionally cut to its
first N agents."""
from __future__ import annotations

import numpy as np

from traces.io import read_trace
from traces.presets import PRESETS
from traces.schema import Trace
from traces.synth import params_with, synthesize


def scenario_trace(trace_cfg: dict, progress=None) -> Trace:
    if "synth" in trace_cfg:
        cfg = dict(trace_cfg["synth"])
        preset, agents, seed = cfg.pop("preset"), int(cfg.pop("agents")), int(cfg.pop("seed", 1))
        trace = synthesize(params_with(PRESETS[preset], **cfg), agents, seed, source=f"synth:{preset}",
                           progress=progress)
    else:
        trace = read_trace(trace_cfg["path"], trace_cfg.get("format", "auto"), block_size=trace_cfg.get("block_size"))
    limit = trace_cfg.get("agents")
    if limit is not None:
        trace = first_agents(trace, int(limit))
    return trace


def first_agents(trace: Trace, n: int) -> Trace:
    """The trace's first n agents (all of it if it has fewer)."""
    starts = trace.agent_starts()
    if n >= len(starts):
        return trace
    end = int(starts[n])
    return Trace(trace.table.slice(0, end), dict(trace.meta))


def mean_shape(trace: Trace) -> tuple[float, float]:
    """Mean cached and new tokens per round."""
    hit = trace.expected_cached_tokens()
    return float(np.mean(hit)), float(np.mean(trace.prompt_tokens() - hit))
