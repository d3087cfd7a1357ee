"""A virtual-clock token bucket: paces a link at `rate` bytes/s without sleeping per block.

Sleeps on this platform are about 1 ms coarse (reference/platform.md), so sleeping once per block would
make small blocks slow and the rate wrong. Instead the pacer keeps a virtual clock `free_at`: the time the
link finishes what it has been given. `reserve(n)` moves it by n / rate from max(now, free_at) and returns
how far the link is ahead of real time; the caller sleeps only when that lead exceeds `slack_s`, so credit
is carried across blocks and the long-run rate is exact whatever the sleep granularity.
"""
from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, rate_bytes_s: float, slack_s: float = 0.002, clock=time.perf_counter):
        if not rate_bytes_s > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate_bytes_s!r}")
        self.rate = float(rate_bytes_s)
        self.slack_s = slack_s
        self.clock = clock
        self.free_at = 0.0
        self.bytes = 0

    def reserve(self, nbytes: int) -> float:
        """Book `nbytes` on the link; the seconds the caller should wait before they count as moved."""
        now = self.clock()
        self.free_at = max(now, self.free_at) + nbytes / self.rate
        self.bytes += nbytes
        return self.free_at - now

    async def pace(self, nbytes: int) -> None:
        """Book `nbytes` and wait (only when the link is ahead by more than `slack_s`) until they are due."""
        ahead = self.reserve(nbytes)
        if ahead > self.slack_s:
            await asyncio.sleep(ahead)

    def pace_blocking(self, nbytes: int) -> None:
        ahead = self.reserve(nbytes)
        if ahead > self.slack_s:
            time.sleep(ahead)
