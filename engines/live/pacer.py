"""A virtual-clock token bucket: paces a link at `rate` bytes/s without sleeping per block.

Sleeps on this platform are about 1 ms coarse (reference/platform.md), so sleeping once per block would
make small blocks slow and the rate wrong. Instead the pacer keeps a virtual clock `free_at`: the time the
link finishes what it has been given. `reserve(n)` moves it by n / rate from max(now, free_at) and returns
when they may start and when they count as moved; the caller waits for the start, moves the bytes, then
waits for the end, skipping waits under `slack_s`. A booking may start up to `burst_s` in the past (the
bucket's depth), so a sleep's overshoot and a send's own time are carried as credit and the long-run rate
is exact whatever the sleep granularity, while an idle link earns no more than that burst.
"""
from __future__ import annotations

import asyncio
import time


class Pacer:
    """`burst_s`: the bucket's depth in seconds of the rate: a booking may start up to this far in the
    past, so a sleep's overshoot (or a send's own time) is not lost; an idle link earns no more credit."""

    def __init__(self, rate_bytes_s: float, slack_s: float = 0.001, burst_s: float = 0.010,
                 clock=time.perf_counter):
        if not rate_bytes_s > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate_bytes_s!r}")
        self.rate = float(rate_bytes_s)
        self.slack_s = slack_s
        self.burst_s = burst_s
        self.clock = clock
        self.free_at = -float("inf")
        self.bytes = 0

    def reserve(self, nbytes: int) -> tuple[float, float]:
        """Book `nbytes` on the link: (seconds until they may start, seconds until they count as moved)."""
        now = self.clock()
        start = max(now - self.burst_s, self.free_at)
        self.free_at = start + nbytes / self.rate
        self.bytes += nbytes
        return start - now, self.free_at - now

    async def pace(self, nbytes: int, move=None) -> None:
        """Book `nbytes`; wait for their start, run `await move()` (the real transfer, if any), then wait
        for their end. Waits shorter than `slack_s` are skipped (the bucket's depth carries them)."""
        start, _ = self.reserve(nbytes)
        end_at = self.free_at
        if start > self.slack_s:
            await asyncio.sleep(start)
        if move is not None:
            await move()
        left = end_at - self.clock()
        if left > self.slack_s:
            await asyncio.sleep(left)

    def pace_blocking(self, nbytes: int, move=None) -> None:
        start, _ = self.reserve(nbytes)
        end_at = self.free_at
        if start > self.slack_s:
            time.sleep(start)
        if move is not None:
            move()
        left = end_at - self.clock()
        if left > self.slack_s:
            time.sleep(left)
