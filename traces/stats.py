"""Trace statistics, with the definitions under which the paper's Table 2 is self-consistent:

- `turns_mean` and `total_mean` (an agent's final context) are means over agents;
- `append_mean` and `gen_mean` are means over agents of each agent's per-round mean;
- `context_mean` is the mean prompt length over all rounds (as is `input_mean`, Mooncake's name);
- `output_mean` is the mean generated length over all rounds;
- `hit_rate` is token-weighted: sum of cached tokens over sum of prompt tokens (ours);
- `hit_rate_per_request` is the mean over requests of each one's cached / prompt tokens (what AIPerf's
  `analyze-trace` reports; lower where short requests hit less, as round 0 of every agent does).
"""
from __future__ import annotations

import numpy as np

from traces.schema import Trace

FIELDS = ("agents", "requests", "turns_mean", "turns_p50", "turns_p99", "turns_max", "append_mean",
          "gen_mean", "context_mean", "total_mean", "input_mean", "output_mean", "hit_rate",
          "hit_rate_per_request", "duration_s")


def table2_means(agent: np.ndarray, append: np.ndarray, gen: np.ndarray) -> dict:
    """Turns, append, gen and total means over agents (rows grouped by agent, `agent` = 0..A-1)."""
    agents = int(agent[-1]) + 1 if len(agent) else 0
    turns = np.bincount(agent, minlength=agents)
    app_sum = np.bincount(agent, weights=append, minlength=agents)
    gen_sum = np.bincount(agent, weights=gen, minlength=agents)
    return {
        "agents": agents,
        "turns": turns,
        "turns_mean": float(turns.mean()),
        "append_mean": float((app_sum / turns).mean()),
        "gen_mean": float((gen_sum / turns).mean()),
        "total_mean": float((app_sum + gen_sum).mean()),
    }


def trace_stats(trace: Trace) -> dict:
    """The statistics of a trace as one flat dict (see FIELDS)."""
    agent = trace.agent_index()
    append = trace.col("append_tokens")
    gen = trace.col("gen_tokens")
    prompt = trace.prompt_tokens()
    cached = trace.expected_cached_tokens()
    m = table2_means(agent, append, gen)
    turns = m.pop("turns")
    duration = None
    if trace.has("arrival_s"):
        arr = trace.col("arrival_s")
        duration = float(arr.max() - arr.min())
    return {
        "agents": m["agents"],
        "requests": int(len(prompt)),
        "turns_mean": m["turns_mean"],
        "turns_p50": float(np.percentile(turns, 50)),
        "turns_p99": float(np.percentile(turns, 99)),
        "turns_max": int(turns.max()),
        "append_mean": m["append_mean"],
        "gen_mean": m["gen_mean"],
        "context_mean": float(prompt.mean()),
        "total_mean": m["total_mean"],
        "input_mean": float(prompt.mean()),
        "output_mean": float(gen.mean()),
        "hit_rate": float(cached.sum() / prompt.sum()) if prompt.sum() else 0.0,
        "hit_rate_per_request": float(np.mean(cached[prompt > 0] / prompt[prompt > 0])) if (prompt > 0).any() else 0.0,
        "duration_s": duration,
    }


def format_stats(stats: dict) -> str:
    """A two-column table for the terminal."""
    lines = []
    for k in FIELDS:
        v = stats.get(k)
        if v is None:
            text = "-"
        elif k.startswith("hit_rate"):
            text = f"{v:.4f}"
        elif isinstance(v, float):
            text = f"{v:,.1f}"
        else:
            text = f"{v:,}"
        lines.append(f"{k:<20}{text:>14}")
    return "\n".join(lines)
