"""`backend: sim`: run a system of the scenario on the simulator, records into the results writer."""
from __future__ import annotations

import gc

import numpy as np

from engines.sim import check_fits, simulate
from engines.costmodel import SimConstants, hardware_spec, model_spec
from traces.errors import InputError
from traces.schema import Trace


def sim_constants(scenario: dict) -> SimConstants:
    return SimConstants().with_overrides(scenario.get("sim"))


def _specs(scenario: dict):
    try:
        return model_spec(scenario["model"]), hardware_spec(scenario["hardware"]), sim_constants(scenario)
    except InputError as exc:
        raise exc.at(scenario.get("_path")) from None


def check(scenario: dict, trace: Trace, start_s: np.ndarray | None = None) -> None:
    """Before anything is written: every system of the scenario can run this trace on its cluster, and its
    telemetry and records fit (harness/run_limits.py)."""
    from harness.run_limits import check_run

    model, hardware, constants = _specs(scenario)
    for system in scenario["systems"]:
        try:
            check_fits(trace, system, model=model, hardware=hardware, cluster=scenario["cluster"], constants=constants)
        except InputError as exc:
            raise exc.at(scenario.get("_path")) from None
    try:
        check_run(scenario, trace, start_s)
    except InputError as exc:
        raise exc.at(scenario.get("_path")) from None


def run_system(scenario: dict, trace: Trace, system: str, start_s: np.ndarray, not_before_s, sink,
               progress=None, until_s: float | None = None) -> dict:
    from harness.run_limits import GuardedSink

    model, hardware, constants = _specs(scenario)
    window_s = float(scenario["telemetry"]["window_s"])
    sink = GuardedSink(sink, int(scenario["cluster"]["decode_nodes"]) * hardware.gpus_per_node, window_s)
    info = simulate(trace, system, model=model, hardware=hardware, cluster=scenario["cluster"], constants=constants,
                    start_s=start_s, not_before_s=not_before_s,
                    window_s=window_s, sink=sink, progress=progress,
                    until_s=float("inf") if until_s is None else until_s)
    gc.collect()  # the simulation's objects hold each other (callbacks): free them before the summary runs
    return {"sim": {"events": info["events"], "alpha_tokens": info["alpha_tokens"], "beta_tokens": info["beta_tokens"]}}
