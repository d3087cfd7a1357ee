"""Bounds on a simulator run that need its trace, checked before anything is written, and the one
guard for what cannot be bounded in advance.

Before: a lower bound of the run's length (the longest agent's chain of decode steps at the one-sequence
floor, tool calls and its arrival time: no system runs an agent faster) gives the telemetry windows a run
will at least record; more than MAX_WINDOWS per system is refused, and so is an estimate of the memory its
telemetry and records need above half the machine's memory, and a staging buffer that cannot hold the
trace's largest KV read. During: a run that records MAX_WINDOWS windows anyway stops (RunLimitExceeded)
with every row it measured kept; the guard wraps the results sink, so the simulator is untouched.
"""
from __future__ import annotations

import os

import numpy as np

from engines.contract import TRAFFIC
from traces.errors import InputError
from traces.schema import Trace

MAX_WINDOWS = 1_000_000          # telemetry windows per system run
MEMORY_SHARE = 0.5               # of the machine's physical memory
CELL_BYTES = 16                  # a link x traffic byte counter of one window, held until the run ends
ENGINE_ROW_BYTES = 100           # an engines row (one per decode GPU per window), in the frames at the end
REQUEST_ROW_BYTES = 500          # a requests row with its strings, in the frames at the end


class RunLimitExceeded(Exception):
    """A run crossed a bound that could not be checked in advance; the message is one line."""


def machine_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return float("inf")


def _cost(scenario: dict):
    from engines.costmodel import SimConstants, hardware_spec, model_spec
    from engines.sim.run import cluster_shape, cost_model

    model, hw = model_spec(scenario["model"]), hardware_spec(scenario["hardware"])
    shape = cluster_shape(scenario["cluster"], model)
    return model, hw, shape, cost_model(model, hw, shape, SimConstants().with_overrides(scenario.get("sim")))


def run_length_floor_s(trace: Trace, step_floor_s: float, start_s: np.ndarray | None = None) -> float:
    """No system finishes before the last agent's arrival plus its generated tokens at one decode step each
    (the first comes from prefill) plus its tool calls."""
    starts = trace.agent_starts()
    if len(starts) == 0:
        return 0.0
    gen = trace.col("gen_tokens").astype(float)
    chain = np.add.reduceat(np.maximum(gen - 1, 0) * step_floor_s + trace.col("tool_latency_s"), starts)
    if start_s is not None and len(start_s) == len(chain):
        chain = chain + np.asarray(start_s, dtype=float)
    return float(np.max(chain))


def check_run(scenario: dict, trace: Trace, start_s: np.ndarray | None = None) -> None:
    """Refuse (InputError naming the scenario key) a run whose telemetry or records cannot fit."""
    model, hw, shape, cost = _cost(scenario)
    window_s = float(scenario["telemetry"]["window_s"])
    floor_s = run_length_floor_s(trace, cost.decode_step_s(1, 0.0, 0.0), start_s)
    windows = floor_s / window_s
    smallest = floor_s / MAX_WINDOWS
    if windows > MAX_WINDOWS:
        raise InputError(f"{window_s:g} s windows over a run of at least {floor_s:,.0f} s (the longest agent's decode "
                         f"steps and tool calls) are {windows:,.0f} windows per system, above the bound of "
                         f"{MAX_WINDOWS:,}; use telemetry.window_s >= {smallest:.3g}", field="telemetry.window_s")
    nodes = shape.prefill_nodes + shape.decode_nodes
    cells = nodes * (4 + 2 * hw.gpus_per_node) * len(TRAFFIC)
    decode_gpus = shape.decode_nodes * hw.gpus_per_node
    need = windows * (cells * CELL_BYTES + decode_gpus * ENGINE_ROW_BYTES) + trace.num_rounds * REQUEST_ROW_BYTES
    have = machine_memory_bytes()
    if need > MEMORY_SHARE * have:
        raise InputError(f"the run needs at least {need / 1e9:,.1f} GB for its telemetry ({windows:,.0f} windows of "
                         f"{cells:,} link counters and {decode_gpus:,} decode rows) and {trace.num_rounds:,} request "
                         f"rows, above half this machine's {have / 1e9:,.1f} GB; use a larger telemetry.window_s, "
                         "fewer nodes or a shorter trace", field="telemetry.window_s")
    reads = [s for s in scenario["systems"] if s != "oracle"]
    if reads and trace.num_rounds:
        largest = float(np.max(trace.expected_cached_tokens())) * cost.kv_bytes_per_token
        if largest > shape.dram_buffer_bytes:
            raise InputError(f"a node's staging buffer of {shape.dram_buffer_bytes / 1e9:g} GB cannot hold the trace's "
                             f"largest KV read ({largest / 1e9:.2f} GB of {model.name} KV), so such a read could only run "
                             f"alone in an empty buffer, stalling the node's other reads; use at least {largest / 1e9:.2f}", field="cluster.dram_buffer_gb")


def check_capacity(scenario: dict, cfg: dict) -> None:
    """`--capacity`: a probe records up to max_horizon_s / window_s telemetry windows, and on a synthetic
    trace draws rate_aps_max x max_horizon_s agents; both are bounded before the search starts."""
    from traces.synth import MAX_AGENTS

    window_s, longest, top = float(scenario["telemetry"]["window_s"]), float(cfg["max_horizon_s"]), float(cfg["rate_aps_max"])
    if longest / window_s > MAX_WINDOWS:
        raise InputError(f"a capacity probe of up to {longest:g} s (capacity.max_horizon_s) in {window_s:g} s windows "
                         f"records {longest / window_s:,.0f} windows, above the bound of {MAX_WINDOWS:,}; use "
                         f"telemetry.window_s >= {longest / MAX_WINDOWS:.3g}", field="telemetry.window_s")
    if "synth" in scenario["trace"] and top * longest + 1 > MAX_AGENTS:
        raise InputError(f"probes up to {top:g} agents/s for up to {longest:g} s synthesise {top * longest + 1:,.0f} "
                         f"agents, above the bound of {MAX_AGENTS:,}", field="capacity.rate_aps_max")


class GuardedSink:
    """The results sink, stopping the run (RunLimitExceeded) once it has recorded MAX_WINDOWS telemetry windows
    (counted by the decode engines' rows: one per decode GPU per window)."""

    def __init__(self, sink, decode_gpus: int, window_s: float, max_windows: int | None = None):
        self.sink, self.decode_gpus, self.window_s = sink, max(1, decode_gpus), window_s
        self.max_windows = MAX_WINDOWS if max_windows is None else max_windows
        self.decode_rows = 0

    def engines(self, batch) -> None:
        self.sink.engines(batch)
        self.decode_rows += sum(1 for role in batch.get("role", ()) if role == "decode")
        windows = self.decode_rows // self.decode_gpus
        if windows > self.max_windows:
            raise RunLimitExceeded(f"stopped after {windows:,} telemetry windows of {self.window_s:g} s (the bound is "
                                   f"{self.max_windows:,} per system; the run outlasted its lower bound): raise "
                                   "telemetry.window_s")

    def __getattr__(self, name):
        return getattr(self.sink, name)
