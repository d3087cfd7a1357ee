"""Modeled compute (`compute: modeled`): step times from the simulator's cost model (engines/costmodel)
for the scenario's model and hardware, times `time_scale`, spent on one compute thread per engine.

The thread keeps a virtual clock like the pacer's (engines/live/pacer.py): a step starts when the last
one ended (or up to `burst_s` ago, if idle: a GPU runs back-to-back steps while the CPU hands out their
tokens, so a late sleep or the event loop's own time between steps is carried, not added) and the thread
sleeps only when it is ahead of real time by more than 1 ms, so 1 ms-coarse sleeps do not stretch many
short steps.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec


def cost_model(model: str, hardware: str, sim: dict | None = None) -> CostModel:
    gpus = hardware_spec(hardware).gpus_per_node
    return CostModel(model_spec(model), hardware_spec(hardware), SimConstants().with_overrides(sim),
                     prefill_ep=gpus, decode_ep=gpus)


class ComputeThread:
    def __init__(self, time_scale: float, burst_s: float = 0.005):
        self.scale = float(time_scale)
        self.burst_s = burst_s
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.busy_until = 0.0
        self.busy_s = 0.0

    def _step(self, seconds: float) -> None:
        now = time.perf_counter()
        self.busy_until = max(now - self.burst_s, self.busy_until) + seconds
        ahead = self.busy_until - now
        if ahead > 0.001:
            time.sleep(ahead)

    async def run(self, model_seconds: float) -> float:
        """Spend `model_seconds` of modeled GPU time (x time_scale) on the compute thread; the wall time."""
        seconds = model_seconds * self.scale
        self.busy_s += seconds
        await asyncio.get_running_loop().run_in_executor(self.pool, self._step, seconds)
        return seconds

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# ----- compute: torch (issue 17) -------------------------------------------------------------------------
async def call(thread: ComputeThread, fn, *args):
    """Run `fn(*args)` (real compute) on the engine's compute thread; the event loop keeps moving bytes."""
    t0 = time.perf_counter()
    try:
        return await asyncio.get_running_loop().run_in_executor(thread.pool, fn, *args)
    finally:
        thread.busy_s += time.perf_counter() - t0


def torch_compute(cfg: dict, thread: ComputeThread):
    """The engine's real model when its config says `compute: torch` (engines/live/torch_compute.py), else
    None (modeled compute)."""
    if cfg.get("compute", "modeled") != "torch":
        return None
    from engines.live.torch_compute import TorchCompute
    return TorchCompute(cfg, thread)
