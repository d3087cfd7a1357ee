"""The live PE's modeled prefill steps (engines/live/batcher.py): batches packed by the simulator's batch
formers under the compute quota, step times from the cost model, layer notices only after a request's
last chunk, and a compute failure reaching every waiting request. The compute thread is a stand-in that
records what it was asked to spend (no clock)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engines.live.batcher import Batcher, Job
from engines.live.compute import cost_model
from engines.policy import pack_chunked, pack_whole

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"
SIM = {"kv_block_tokens": 64, "prefill_activation_gb": 0, "decode_activation_gb": 0}
LAYERS = 8


class Recorder:
    """Spends nothing; keeps each call's seconds. `fail_at`: the call that raises."""
    def __init__(self, fail_at: int | None = None):
        self.calls: list[float] = []
        self.fail_at = fail_at

    async def run(self, seconds: float) -> float:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise OSError("the compute thread died")
        self.calls.append(seconds)
        await asyncio.sleep(0)
        return seconds


def _cost():
    return cost_model(str(LIVE / "live-tiny.model.yaml"), str(LIVE / "live-host-slow-gpu.hardware.yaml"), SIM)


async def _drain(jobs):
    got = {id(j): [] for j in jobs}

    async def one(job):
        while len(got[id(job)]) < LAYERS:
            item = await asyncio.wait_for(job.layers.get(), 10)
            got[id(job)].append(item)
            if isinstance(item, Exception):
                return
    await asyncio.gather(*(one(j) for j in jobs))
    return [got[id(j)] for j in jobs]


@pytest.mark.parametrize("chunked", [False, True])
def test_steps_follow_the_shared_batch_former_and_the_cost_model(chunked):
    cost = _cost()
    shapes = [(2048, 300), (0, 2000), (4096, 64), (1024, 500)]

    async def main():
        rec = Recorder()
        b = Batcher(cost, rec, LAYERS, quota_s=cost.k.compute_quota_s)
        jobs = [Job(c, n) for c, n in shapes]
        for job in jobs:
            b.submit(job, chunked=chunked)
        layers = await _drain(jobs)
        await b.task
        return b, rec, layers

    b, rec, layers = asyncio.run(main())
    assert all(seen == list(range(LAYERS)) for seen in layers)  # every layer, in order, once
    # replay the packing the simulator would do, step by step, and the time each step takes
    queue = [list(s) for s in shapes]
    expected = []
    while queue:
        if chunked:
            packed = pack_chunked([tuple(q) for q in queue], cost.prefill_attention_s, cost.max_chunk,
                                  cost.k.compute_quota_s, cost.batch_speed)
        else:
            packed = pack_whole([tuple(q) for q in queue], cost.prefill_attention_s, cost.k.compute_quota_s,
                                cost.batch_speed)
        speed = cost.batch_speed(len(packed))
        step = sum(p.attention_s for p in packed) / speed + cost.prefill_ffn_s(sum(p.tokens for p in packed), 1) / speed
        if not chunked:  # whole-request prefill submits its hit KV's H2D copies
            step += sum(-(-queue[p.index][0] // 64) for p in packed) * LAYERS * cost.k.copy_submit_s
        expected.append(step + cost.prefill_step_overhead_s)
        for p in reversed(packed):
            queue[p.index][0] += p.tokens
            queue[p.index][1] -= p.tokens
            if queue[p.index][1] <= 0:
                queue.pop(p.index)
    assert b.steps == len(expected) and len(rec.calls) == LAYERS * len(expected)
    got = [sum(rec.calls[i * LAYERS:(i + 1) * LAYERS]) for i in range(b.steps)]
    assert got == pytest.approx(expected, rel=1e-9)
    if chunked:  # the 2,000-token prefill is over the quota: it is chunked over several steps
        assert b.steps > len(shapes) // 2 and b.batched > len(shapes)
    else:
        assert b.batched == len(shapes)


def test_a_chunked_request_hears_of_its_layers_only_after_its_last_chunk():
    cost = _cost()

    async def main():
        rec = Recorder()
        b = Batcher(cost, rec, LAYERS, quota_s=cost.k.compute_quota_s)
        job = Job(0, 4000)
        b.submit(job, chunked=True)
        first = await asyncio.wait_for(job.layers.get(), 10)
        return b, rec, first, job

    b, rec, first, job = asyncio.run(main())
    assert first == 0 and job.chunks >= 2
    assert len(rec.calls) >= LAYERS * (job.chunks - 1) + 1  # every earlier chunk's step ran first


def test_a_compute_failure_reaches_every_waiting_request():
    cost = _cost()

    async def main():
        b = Batcher(cost, Recorder(fail_at=3), LAYERS, quota_s=cost.k.compute_quota_s)
        jobs = [Job(0, 2000), Job(0, 2000), Job(1024, 100)]
        for job in jobs:
            b.submit(job, chunked=False)
        layers = await _drain(jobs)
        with pytest.raises(OSError):
            await b.task
        return b, layers

    b, layers = asyncio.run(main())
    assert all(isinstance(seen[-1], OSError) for seen in layers)
    assert layers[0][:3] == [0, 1, 2] and not b.ready


def test_a_withdrawn_request_leaves_the_queue():
    cost = _cost()

    async def main():
        b = Batcher(cost, Recorder(), LAYERS, quota_s=cost.k.compute_quota_s)
        a, w = Job(0, 2000), Job(0, 2000)
        b.submit(a, chunked=False)
        b.submit(w, chunked=False)
        b.withdraw(w)
        await _drain([a])
        await b.task
        return b, w

    b, w = asyncio.run(main())
    assert b.batched == 1 and w.layers.empty()
