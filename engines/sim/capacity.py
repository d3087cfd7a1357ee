"""Admission for anything with a size (a node's DRAM staging buffer, a PE's HBM), after SimPy's resources.

`fits` is the one "is there room" test: a reservation fits when it stays within the size, or when
nothing is held (a single request larger than the whole capacity still runs, alone). `reserve` and
`release` move the level; a release wakes, in this order, the capacity's own pump (`on_free`: the
node's storage reads, the PE's HBM queue), the FIFO `waiters` (each retried until one returns False:
it still does not fit and keeps its place), and the one-shot `watchers` (prefill groups that left
work waiting here, called once each in the order they asked).
"""
from __future__ import annotations

from collections import deque
from typing import Callable


class Capacity:
    __slots__ = ("size", "used", "on_free", "waiters", "watchers")

    def __init__(self, size: float, on_free: Callable[[], None] | None = None):
        self.size = size
        self.used = 0.0
        self.on_free = on_free
        self.waiters: deque[Callable[[], bool]] = deque()
        self.watchers: dict[Callable[[], None], None] = {}

    def fits(self, nbytes: float, extra: float = 0.0) -> bool:
        """Would `nbytes` fit now, on top of `extra` bytes the caller is about to reserve?"""
        used = self.used + extra
        return used + nbytes <= self.size or used <= 0

    def reserve(self, nbytes: float) -> None:
        self.used += nbytes

    def release(self, nbytes: float) -> None:
        self.used -= nbytes
        if self.used < 1e-6:
            self.used = 0.0
        if self.on_free is not None:
            self.on_free()
        waiters = self.waiters
        while waiters:
            if not waiters[0]():
                break
            waiters.popleft()
        if self.watchers:
            watchers, self.watchers = self.watchers, {}
            for watcher in watchers:
                watcher()

    def wait(self, attempt: Callable[[], bool]) -> None:
        """Run `attempt` now unless others wait before it; if it does not get in, it waits its turn."""
        if self.waiters or not attempt():
            self.waiters.append(attempt)

    def watch(self, watcher: Callable[[], None]) -> None:
        """Call `watcher` once, at the next release."""
        self.watchers[watcher] = None
