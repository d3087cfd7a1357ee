"""A fake noisy endpoint for the gate's tests: `backend: http` results written through the real
ResultsWriter, `repeats` runs of one system, whose latencies vary run to run.

Each run draws one factor for the whole run (the run-to-run noise: uniform in 1 +- `noise`, so with 10 %
noise runs differ by up to 10 % from the middle; `spread="normal"` draws `1 + noise * N(0, 1)` instead, a
coefficient of variation of `noise`), and each request its own lognormal TTFT and TPOT (the
request-to-request noise). Agents arrive on the same Poisson schedule in every run and run their
rounds back to back, so makespan and throughput follow the latencies. `slowdown` multiplies every
latency (1.2: a 20 % slower candidate).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.results import ResultsWriter

SCENARIO = {"name": "noisy-endpoint", "backend": "http",
            "trace": {"synth": {"preset": "paper-64k", "agents": 40, "seed": 1}},
            "systems": ["fake"], "arrival": {"mode": "poisson", "rate_aps": 4.0, "seed": 1},
            "telemetry": {"window_s": 1.0}, "seed": 1,
            "endpoint": {"url": "http://127.0.0.1:9"}}
AGENTS, ROUNDS, OUTPUT_TOKENS = 40, 5, 64


def noisy_run(run_dir: Path, seed: int, *, repeats: int = 3, noise: float = 0.10, slowdown: float = 1.0,
              spread: str = "uniform") -> Path:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(np.random.default_rng(1).exponential(1 / 4.0, AGENTS))  # the same in every run
    with ResultsWriter(run_dir, SCENARIO) as writer:
        for repeat in range(repeats):
            draw = rng.uniform(-1, 1) if spread == "uniform" else rng.standard_normal()
            factor = slowdown * max(0.5, 1 + noise * draw)
            writer.begin_system("fake", repeat)
            req = {k: [] for k in ("agent_id", "round", "t_scheduled", "t_sent", "t_first_token", "t_done")}
            agents = {k: [] for k in ("agent_id", "t_arrival", "t_done", "rounds", "jct_s", "status")}
            for a, t0 in enumerate(arrivals):
                t = t0
                for r in range(ROUNDS):
                    ttft = factor * rng.lognormal(np.log(0.4), 0.5)
                    tpot = factor * rng.lognormal(np.log(0.03), 0.2)
                    req["agent_id"].append(f"a{a}")
                    req["round"].append(r)
                    req["t_scheduled"].append(t)
                    req["t_sent"].append(t)
                    req["t_first_token"].append(t + ttft)
                    t = t + ttft + tpot * (OUTPUT_TOKENS - 1)
                    req["t_done"].append(t)
                agents["agent_id"].append(f"a{a}")
                agents["t_arrival"].append(t0)
                agents["t_done"].append(t)
                agents["rounds"].append(ROUNDS)
                agents["jct_s"].append(t - t0)
                agents["status"].append("ok")
            n = len(req["round"])
            writer.requests({**req, "prompt_tokens": [1000] * n, "expected_cached_tokens": [900] * n,
                             "cached_tokens": [900] * n, "output_tokens": [OUTPUT_TOKENS] * n,
                             "pe": ["server"] * n, "de": ["server"] * n, "read_side": ["none"] * n,
                             "read_bytes": [0] * n, "status": ["ok"] * n})
            writer.agents(agents)
            writer.end_system()
    return run_dir
