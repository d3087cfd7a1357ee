"""A live PE's modeled prefill steps, formed as the simulator forms them (engines/sim/prefill.py).

Requests whose hit KV is in the PE's buffer wait in a FIFO ready queue; one step at a time, the batch is
packed by the shared batch formers (`engines.policy.pack_whole` for whole-request prefill, `pack_chunked`
with the compute quota for the paper's scheduler) and takes the cost model's time for a one-GPU group:
the batch's attention plus its FFN at the batch-size efficiency of its size, plus the step overhead, plus
whole-request prefill's H2D copy submissions (`copy_submit_s`, as the simulator charges them). The step
is spent layer by layer on the engine's compute thread; a request whose last chunk is in the step learns
as each layer ends (its KV of that layer is then complete and may stream to the DE).
"""
from __future__ import annotations

import asyncio
import time

from engines.costmodel.cost import CostModel
from engines.live.compute import ComputeThread
from engines.live.steps import StepLog
from engines.policy import pack_chunked, pack_whole


class Job:
    """One request on the PE: `cached` tokens of KV present, `remaining` to compute; `layers` yields
    the index of each layer as its last chunk finishes it (or the error that stopped the steps)."""
    __slots__ = ("cached", "remaining", "chunks", "layers")

    def __init__(self, cached: int, new: int):
        self.cached = cached
        self.remaining = max(1, new)  # a whole hit still computes its last token (the simulator's rule)
        self.chunks = 0
        self.layers: asyncio.Queue = asyncio.Queue()


class Batcher:
    def __init__(self, cost: CostModel, compute: ComputeThread, layers: int, *, quota_s: float,
                 log: StepLog | None = None):
        self.cost = cost
        self.log = log
        self.compute = compute
        self.layers = layers
        self.quota_s = quota_s
        self.ready: list[Job] = []
        self.task: asyncio.Task | None = None
        self.steps = 0          # steps run, and requests summed over them (the mean batch, for tests)
        self.batched = 0

    def submit(self, job: Job, *, chunked: bool) -> None:
        self.ready.append(job)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(chunked))

    def withdraw(self, job: Job) -> None:
        """The request ended early (its caller went away): it leaves the queue; a running step finishes."""
        if job in self.ready:
            self.ready.remove(job)

    def step_s(self, batch: list, *, whole: bool) -> float:
        """One step of `batch` [(job, tokens, attention_s)] on one GPU: the simulator's PrefillGroup.kick
        for a group of one PE (its `_copy_submit_s` for whole-request prefill)."""
        c = self.cost
        speed = c.batch_speed(len(batch))
        attention = sum(a for _, _, a in batch) / speed
        tokens = sum(n for _, n, _ in batch)
        copies = 0.0
        if whole and c.k.copy_submit_s > 0:
            block = c.k.kv_block_tokens
            blocks = sum(-(-job.cached // block) for job, _, _ in batch if job.chunks == 0)
            copies = blocks * c.model.layers * c.k.copy_submit_s
        return attention + copies + c.prefill_ffn_s(tokens, 1) / speed + c.prefill_step_overhead_s

    def _form(self, chunked: bool) -> list:
        c = self.cost
        shapes = [(job.cached, job.remaining) for job in self.ready]
        if chunked:
            packed = pack_chunked(shapes, c.prefill_attention_s, c.max_chunk, self.quota_s, c.batch_speed)
        else:
            packed = pack_whole(shapes, c.prefill_attention_s, self.quota_s, c.batch_speed)
        return [(self.ready[item.index], item.tokens, item.attention_s) for item in packed]

    async def _run(self, chunked: bool) -> None:
        last: list[Job] = []
        try:
            while self.ready:
                batch = self._form(chunked)
                layer_s = self.step_s(batch, whole=not chunked) / self.layers
                last = [job for job, n, _ in batch if n >= job.remaining]
                for job, n, _ in batch:
                    job.cached += n
                    job.remaining -= n
                    job.chunks += 1
                    if job.remaining <= 0:
                        self.ready.remove(job)
                self.steps += 1
                self.batched += len(batch)
                t0, spent = time.perf_counter(), 0.0
                for layer in range(self.layers):
                    spent += await self.compute.run(layer_s)
                    for job in last:
                        job.layers.put_nowait(layer)
                if self.log is not None:  # the step's modeled seconds (its wall time carries the thread's lag)
                    self.log.add(t0, len(batch), sum(n for _, n, _ in batch), t1=t0 + spent)
        except Exception as exc:  # the compute thread failed: every waiting request fails with it
            for job in self.ready + last:
                job.layers.put_nowait(exc)
            self.ready.clear()
            raise
