"""The event loop: one heap, one clock, nothing clever (the style of SimPy's core and Vidur's events).

An event is (time, sequence number, handler, args); ties run in the order they were scheduled, which
makes every run with the same inputs identical to the last digit. Handlers that may be superseded
carry a version number and return early when stale.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable


class EventLoop:
    __slots__ = ("now", "_heap", "_seq", "events")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.events = 0

    def at(self, t: float, handler: Callable[..., Any], *args) -> None:
        """Run handler(*args) at time t (never before now)."""
        if t < self.now:
            t = self.now
        heapq.heappush(self._heap, (t, self._seq, handler, args))
        self._seq += 1

    def after(self, delay: float, handler: Callable[..., Any], *args) -> None:
        self.at(self.now + delay, handler, *args)

    def run(self, until: float = float("inf"), stop: Callable[[], bool] | None = None) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap:
            if heap[0][0] > until:
                self.now = until
                return
            t, _, handler, args = pop(heap)
            self.now = t
            self.events += 1
            handler(*args)
            if stop is not None and stop():
                return

    def __len__(self) -> int:
        return len(self._heap)
