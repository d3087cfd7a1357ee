"""Entry point: simulate one system of a scenario over a trace."""
from __future__ import annotations

import gc
from contextlib import contextmanager

import numpy as np

from engines.policy import system_policy
from engines.sim.cluster import ClusterShape
from engines.sim.runtime import Simulation
from engines.sim.workload import Workload
from engines.costmodel import CostModel, HardwareSpec, ModelSpec, SimConstants
from traces.errors import InputError
from traces.schema import Trace


def cluster_shape(cluster: dict, model: ModelSpec) -> ClusterShape:
    try:
        p, d = int(cluster["prefill_nodes"]), int(cluster["decode_nodes"])
    except KeyError as exc:
        raise InputError("missing key", field=f"cluster.{exc.args[0]}") from None
    return ClusterShape(
        prefill_nodes=p, decode_nodes=d,
        prefill_group_nodes=int(cluster.get("prefill_group_nodes") or min(p, 2)),
        decode_group_nodes=int(cluster.get("decode_group_nodes") or min(d, 4)),
        dram_buffer_bytes=float(cluster.get("dram_buffer_gb") or model.dram_buffer_gb) * 1e9,
    )


def cost_model(model: ModelSpec, hw: HardwareSpec, shape: ClusterShape, constants: SimConstants) -> CostModel:
    pe_group, de_group = shape.group_sizes(hw.gpus_per_node)
    return CostModel(model, hw, constants, prefill_ep=pe_group, decode_ep=de_group)


def check_fits(trace: Trace, system: str, *, model: ModelSpec, hardware: HardwareSpec, cluster: dict,
               constants: SimConstants | None = None) -> None:
    """Refuse runs that could not run as configured: a model with no HBM left for KV on a prefill or
    decode GPU, a round whose KV no decode GPU can hold, or (whole-request prefill) no prefill GPU."""
    policy = system_policy(system)
    cost = cost_model(model, hardware, cluster_shape(cluster, model), constants or SimConstants())
    whole_request = not (policy.layerwise or policy.free_io)
    prompts = trace.prompt_tokens()
    tokens = int((prompts + trace.col("gen_tokens")).max()) if len(prompts) else 0
    prompt = int(prompts.max()) if len(prompts) else 0
    pe_cap = cost.prefill_kv_capacity_bytes()
    if pe_cap <= 0:
        raise InputError(f"{model.name} leaves no HBM for KV on a prefill GPU of {hardware.name} with expert "
                         f"parallelism {cost.prefill_ep} (weights {cost.weight_bytes_per_gpu(cost.prefill_ep) / 1e9:.0f} "
                         f"GB, HBM {hardware.gpu.hbm_bytes / 1e9:.0f} GB); add prefill nodes (an expert-parallel group "
                         "spans up to cluster.prefill_group_nodes of them)", field="cluster.prefill_nodes")
    if whole_request and prompt * cost.kv_bytes_per_token > pe_cap:
        raise InputError(f"{system} prefills whole requests, and a {prompt:,}-token prompt needs "
                         f"{prompt * cost.kv_bytes_per_token / 1e9:.1f} GB of KV in the HBM of a prefill GPU, which "
                         f"holds {pe_cap / 1e9:.1f} GB for {model.name} on {hardware.name}", field="trace")
    cap = cost.decode_kv_capacity_bytes()
    if cap <= 0:
        raise InputError(f"{model.name} does not fit on a decode GPU of {hardware.name} with expert parallelism "
                         f"{cost.decode_ep} (weights {cost.weight_bytes_per_gpu(cost.decode_ep) / 1e9:.0f} GB, HBM "
                         f"{hardware.gpu.hbm_bytes / 1e9:.0f} GB); add decode nodes", field="cluster.decode_nodes")
    if tokens * cost.kv_bytes_per_token > cap:
        raise InputError(f"a round of {tokens:,} tokens needs {tokens * cost.kv_bytes_per_token / 1e9:.1f} GB of KV "
                         f"on one decode GPU, which holds {cap / 1e9:.1f} GB for {model.name} on {hardware.name}",
                         field="trace")


def simulate(trace: Trace, system: str, *, model: ModelSpec, hardware: HardwareSpec, cluster: dict,
             constants: SimConstants | None = None, start_s: np.ndarray | None = None,
             not_before_s: np.ndarray | None = None, window_s: float = 1.0, sink=None, progress=None,
             until_s: float = float("inf")) -> dict:
    """Run `system` over `trace`; records go to `sink`; returns run facts (events, makespan, alpha, beta).
    With `until_s` the simulation stops at that time (capacity probes)."""
    from engines.sim.records import MemorySink

    check_fits(trace, system, model=model, hardware=hardware, cluster=cluster, constants=constants)
    policy = system_policy(system)
    shape = cluster_shape(cluster, model)
    cost = cost_model(model, hardware, shape, constants or SimConstants())
    agents = len(trace.agent_starts())
    workload = Workload(trace, np.zeros(agents) if start_s is None else start_s, not_before_s,
                        hit_granularity=cost.k.hit_granularity_tokens)
    sim = Simulation(workload, policy, cost, shape, window_s=window_s, sink=sink if sink is not None else MemorySink(),
                     progress=progress)
    with rare_collections():
        return sim.run(until_s)


# CPython's default thresholds (700, 10, 10) collect the young generation every 700 allocations and the
# whole heap each time the long-lived objects grow by a quarter. A simulation allocates millions of
# short-lived objects (events, flows, closures) beside a large, growing long-lived set (requests in flight,
# records not yet flushed), so those full collections each traverse it all: 29 s of the first 153 s of a
# 48P96D run (31 full ones, 19 %), 9.2 s of 137 s at 8P16D 8,192 agents (measured with gc.callbacks).
# During a run, collect the young generation every 10,000 allocations and the whole heap almost never;
# the caller collects once the run is over (harness/backend_sim.py). The simulation's numbers do not
# depend on when objects are collected (no order in it comes from object ids), and its peak memory did not
# move (8P16D 8,192 agents: 1.41 GB either way).
RUN_THRESHOLDS = (10_000, 50, 1_000)


@contextmanager
def rare_collections():
    """Collect garbage rarely while the simulation runs (see RUN_THRESHOLDS); restores the thresholds."""
    old = gc.get_threshold()
    gc.set_threshold(*RUN_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)
