"""Intra-PE batching (reference/paper.md 4.5).

A request in a forward batch is (cached, bsz): tokens whose KV is available and tokens to compute.
DualPath packs requests FIFO until the predicted attention time reaches the compute quota, and
binary-searches the chunk of the request that would go over it; the rest carries over. The baseline
packs whole requests only. A batch of n requests runs at `speed(n)` of the per-request prediction
(small batches use the GPU less well: reference/paper.md 1.5, Fig. 3 right), so the predicted batch
time is sum(attention_s) / speed(n).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence


class BatchItem(NamedTuple):  # a named tuple: made once per request per prefill step, so cheap to make
    index: int        # position in the engine's ready queue
    cached: int       # KV tokens available (storage hit + earlier chunks)
    tokens: int       # tokens to compute in this batch
    attention_s: float


def _unit(n: int) -> float:
    return 1.0


def pack_chunked(queue: Sequence[tuple[int, int]], attention_s: Callable[[int, int], float],
                 max_chunk: Callable[[int, int, float], int], quota_s: float,
                 speed: Callable[[int], float] = _unit) -> list[BatchItem]:
    """queue: (cached, remaining new tokens) per ready request, FIFO. Fill the quota exactly."""
    out: list[BatchItem] = []
    used = 0.0
    for i, (cached, remaining) in enumerate(queue):
        t = attention_s(cached, remaining)
        budget = quota_s * speed(len(out) + 1)
        if used + t <= budget:
            out.append(BatchItem(i, cached, remaining, t))
            used += t
            continue
        chunk = max_chunk(cached, remaining, budget - used)
        if chunk <= 0 and not out:
            chunk = 1  # a single token over the quota still has to make progress
        if chunk > 0:
            t = attention_s(cached, chunk)
            out.append(BatchItem(i, cached, chunk, t))
        break
    return out


def pack_whole(queue: Sequence[tuple[int, int]], attention_s: Callable[[int, int], float],
               quota_s: float, speed: Callable[[int], float] = _unit) -> list[BatchItem]:
    """Baseline: whole requests FIFO while the attention time stays within the quota (at least one)."""
    out: list[BatchItem] = []
    used = 0.0
    for i, (cached, remaining) in enumerate(queue):
        t = attention_s(cached, remaining)
        if out and used + t > quota_s * speed(len(out) + 1):
            break
        out.append(BatchItem(i, cached, remaining, t))
        used += t
    return out
