"""Links as processor-sharing resources, flows over them, and per-window byte telemetry.

A flow moves bytes over a path of links (one flow per request per hop). Its rate is its max-min fair
share approximated link by link: the smallest `capacity / active flows` over the links it crosses.
This is exact for single-link flows (storage reads) and whenever one link is every flow's bottleneck,
and it never lets a link carry more than its capacity. Metered links (DRAM) record bytes without
constraining. Rates change only when a flow starts or ends on a shared link; completion events carry
a version number so superseded ones are ignored.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable

from engines.contract import TRAFFIC, window_overlaps
from engines.sim.core import EventLoop

_TRAFFIC_INDEX = {t: i for i, t in enumerate(TRAFFIC)}


class Link:
    __slots__ = ("id", "node", "name", "direction", "capacity", "flows")

    def __init__(self, id: int, node: int, name: str, direction: str, capacity: float | None):
        self.id = id
        self.node = node
        self.name = name
        self.direction = direction
        self.capacity = capacity  # bytes/s; None = metered only
        self.flows: dict[Flow, None] = {}  # insertion-ordered: runs are deterministic


class Flow:
    __slots__ = ("left", "rate", "t_last", "links", "cols", "on_done", "version")

    def __init__(self, size: float, links: tuple, cols: list, on_done: Callable[[], None], now: float):
        self.left = size
        self.rate = 0.0
        self.t_last = now
        self.links = links
        self.cols = cols          # telemetry columns this flow's bytes are counted in
        self.on_done = on_done
        self.version = 0


class SharedLink:
    """A link whose flows cross only it (storage reads on an SNIC): exact processor sharing with a
    virtual clock, one pending event per link instead of one per flow."""

    __slots__ = ("net", "link", "cols", "v", "t_last", "heap", "seq", "version")

    def __init__(self, net: "Network", link: Link, meters: tuple, traffic: str):
        self.net = net
        self.link = link
        t = _TRAFFIC_INDEX[traffic]
        self.cols = [l.id * len(TRAFFIC) + t for l in (link,) + meters]
        self.v = 0.0          # bytes each active flow has received so far
        self.t_last = 0.0
        self.heap: list = []
        self.seq = 0
        self.version = 0

    def _advance(self, now: float) -> None:
        n = len(self.heap)
        dt = now - self.t_last
        if n and dt > 0:
            cap = self.link.capacity
            self.v += dt * cap / n
            self.net._record_cols(self.cols, self.t_last, now, dt * cap)
        self.t_last = now

    def start(self, size: float, on_done: Callable[[], None]) -> None:
        loop = self.net.loop
        if size <= 0:
            loop.at(loop.now, on_done)
            return
        self._advance(loop.now)
        heapq.heappush(self.heap, (self.v + size, self.seq, on_done))
        self.seq += 1
        self._reschedule()

    def _reschedule(self) -> None:
        self.version += 1
        if self.heap:
            n = len(self.heap)
            wait = (self.heap[0][0] - self.v) * n / self.link.capacity
            # a remainder too small to move the clock (below one ulp of it) would fire at the same instant
            # forever: step to the next representable time, which moves every flow at least that far
            t = max(self.t_last + max(0.0, wait), math.nextafter(self.t_last, math.inf))
            self.net.loop.at(t, self._next, self.version)

    def _next(self, version: int) -> None:
        if version != self.version:
            return
        self._advance(self.net.loop.now)
        done = []
        heap = self.heap
        while heap and heap[0][0] <= self.v * (1 + 1e-12) + 1e-6:
            done.append(heapq.heappop(heap)[2])
        self._reschedule()
        for on_done in done:
            on_done()

    @property
    def active(self) -> int:
        return len(self.heap)


class Network:
    """All links of the cluster and the flows on them."""

    def __init__(self, loop: EventLoop, window_s: float):
        self.loop = loop
        self.window_s = window_s
        self.links: list[Link] = []
        self.windows: list[list[float]] = []  # windows[w][link.id * len(TRAFFIC) + traffic] = bytes
        self.active = 0
        self._dirty: dict[Flow, None] = {}    # flows whose share may have changed at this instant
        self._cols: dict[tuple, list] = {}     # (links, meters, traffic) -> telemetry columns

    def add_link(self, node: int, name: str, direction: str, capacity: float | None) -> Link:
        link = Link(len(self.links), node, name, direction, capacity)
        self.links.append(link)
        for row in self.windows:
            row.extend([0.0] * len(TRAFFIC))
        return link

    # ----- flows -------------------------------------------------------------------------------
    def start(self, size: float, links: tuple, meters: tuple, traffic: str, on_done: Callable[[], None]) -> Flow:
        """Start moving `size` bytes over `links` (constraining) and `meters` (recorded only)."""
        now = self.loop.now
        key = (links, meters, traffic)
        cols = self._cols.get(key)
        if cols is None:
            t = _TRAFFIC_INDEX[traffic]
            nt = len(TRAFFIC)
            cols = self._cols[key] = [link.id * nt + t for link in links + meters]
        flow = Flow(float(size), links, cols, on_done, now)
        if size <= 0:
            self.loop.at(now, on_done)
            return flow
        self.active += 1
        alone = True
        for link in links:
            if link.flows:
                alone = False
            link.flows[flow] = None
        if alone:  # nobody to share with: its rate is the narrowest link, nothing else changes
            rate = 1e18
            for link in links:
                if link.capacity < rate:
                    rate = link.capacity
            flow.rate = rate
            flow.version = 1
            self.loop.at(now + flow.left / rate, self._done, flow, 1)
            return flow
        dirty = self._dirty
        if not dirty:
            self.loop.at(now, self._flush)
        for link in links:
            dirty.update(link.flows)
        return flow

    def _flush(self) -> None:
        """Re-rate, once, every flow touched by the starts and ends of this instant."""
        dirty, self._dirty = self._dirty, {}
        self._rerate(dirty, self.loop.now)

    def _advance(self, flow: Flow, now: float) -> None:
        """Account the bytes a flow moved since its last update."""
        dt = now - flow.t_last
        if dt > 0 and flow.rate > 0:
            moved = min(flow.left, flow.rate * dt)
            flow.left -= moved
            self._record_cols(flow.cols, flow.t_last, now, moved)
        flow.t_last = now

    def _rerate(self, flows, now: float) -> None:
        at = self.loop.at
        done = self._done
        record = self._record_cols
        for flow in flows:
            left = flow.left
            if left <= 0:
                continue  # finished at this instant
            rate = math.inf
            for link in flow.links:
                share = link.capacity / len(link.flows)
                if share < rate:
                    rate = share
            if rate == math.inf:
                rate = 1e18  # no constraining link: effectively instantaneous
            old = flow.rate
            if rate != old:
                dt = now - flow.t_last  # self._advance(flow, now), inline
                if dt > 0 and old > 0:
                    moved = old * dt
                    if left < moved:
                        moved = left
                    left -= moved
                    flow.left = left
                    record(flow.cols, flow.t_last, now, moved)
                flow.t_last = now
                flow.rate = rate
                version = flow.version = flow.version + 1
                at(now + left / rate, done, flow, version)

    def _done(self, flow: Flow, version: int) -> None:
        if version != flow.version:
            return
        now = self.loop.now
        self._advance(flow, now)
        flow.left = 0.0
        flow.version += 1
        self.active -= 1
        dirty = self._dirty
        for link in flow.links:
            flows = link.flows
            del flows[flow]
            if flows:
                if not dirty:
                    self.loop.at(now, self._flush)
                dirty.update(flows)
        flow.on_done()

    # ----- telemetry ---------------------------------------------------------------------------
    def record(self, links: tuple, traffic: str, t0: float, t1: float, nbytes: float) -> None:
        """Count bytes that moved without a flow (e.g. write-backs, which never constrain a link)."""
        nt = len(TRAFFIC)
        t = _TRAFFIC_INDEX[traffic]
        self._record_cols([link.id * nt + t for link in links], t0, max(t1, t0), nbytes)

    def _record_cols(self, cols: list, t0: float, t1: float, moved: float) -> None:
        ws = self.window_s
        w0 = int(t0 / ws)
        w1 = int(t1 / ws)
        windows = self.windows
        if w0 == w1 and w1 < len(windows):  # the common case: inside one window that exists
            row = windows[w0]
            for c in cols:
                row[c] += moved
            return
        if len(windows) <= w1:
            width = len(self.links) * len(TRAFFIC)
            while len(windows) <= w1:
                windows.append([0.0] * width)
        if w0 == w1:
            row = windows[w0]
            for c in cols:
                row[c] += moved
            return
        span = t1 - t0
        for w, start, end in window_overlaps(t0, t1, ws):
            part = moved * (end - start) / span
            row = windows[w]
            for c in cols:
                row[c] += part

    def telemetry_rows(self, system: str, node_names: dict[int, str]) -> dict:
        """The links contract (DESIGN.md): one row per (window, link, direction, traffic) with bytes, as
        numpy columns (a 48P96D run has ~10^7 rows: Python lists of them cost gigabytes)."""
        import numpy as np

        nt = len(TRAFFIC)
        width = len(self.links) * nt
        grid = np.zeros((len(self.windows), width))
        for i, row in enumerate(self.windows):
            grid[i, :len(row)] = row
        w, c = np.nonzero(grid > 0.5)
        link_idx = c // nt
        ws = self.window_s
        node = np.array([node_names[link.node] for link in self.links], dtype=object)
        name = np.array([link.name for link in self.links], dtype=object)
        direction = np.array([link.direction for link in self.links], dtype=object)
        traffic = np.array(TRAFFIC, dtype=object)
        return {
            "system": np.full(len(w), system, dtype=object),
            "t_start": w * ws,
            "t_end": (w + 1) * ws,
            "node": node[link_idx],
            "link": name[link_idx],
            "direction": direction[link_idx],
            "bytes": np.rint(grid[w, c]).astype(np.int64),
            "traffic": traffic[c % nt],
        }
