"""Decode engine groups with continuous batching, advanced from one batch change to the next.

A group's DEs step in lockstep (data-parallel attention, expert-parallel FFN): one iteration takes the
slowest DE's step time, and every decoding sequence gains one token per iteration. The group keeps a
virtual token clock V (iterations since start, fractional); a sequence joining at V0 with n tokens to
generate finishes at V0 + n. Only batch changes (joins, finishes) are events, never single tokens.
"""
from __future__ import annotations

import heapq
from typing import Callable

from engines.sim.cluster import Engine
from engines.sim.core import EventLoop
from engines.costmodel.cost import CostModel


class DecodeGroup:
    def __init__(self, des: list[Engine], loop: EventLoop, cost: CostModel, on_finish: Callable):
        self.des = des
        self.loop = loop
        self.cost = cost
        self.on_finish = on_finish
        self.v = 0.0
        self.t_last = 0.0
        self.step_s = 0.0
        self.heap: list = []
        self.seq = 0
        self.version = 0

    def _advance(self, now: float) -> None:
        if self.step_s > 0:
            self.v += (now - self.t_last) / self.step_s
        self.t_last = now

    def _restep(self, de: Engine) -> None:
        old = de.step_s
        de.step_s = self.cost.decode_step_s(de.batch, de.ctx_sum, de.min_sum) if de.batch else 0.0
        if de.step_s >= self.step_s:
            self.step_s = de.step_s
        elif old >= self.step_s:  # the slowest DE got faster: find the new slowest
            self.step_s = max(d.step_s for d in self.des)

    def _reschedule(self) -> None:
        self.version += 1
        if self.heap and self.step_s > 0:
            wait = max(0.0, (self.heap[0][0] - self.v) * self.step_s)
            self.loop.at(self.t_last + wait, self._next, self.version)

    def join(self, req, de: Engine) -> float:
        """Start decoding `req` on `de`; returns the time of its second token."""
        now = self.loop.now
        self._advance(now)
        ctx = req.prompt + req.gen / 2  # time-averaged context while it decodes
        req.decode_ctx = ctx
        de.batch += 1
        de.ctx_sum += ctx
        de.min_sum += self.cost.min_ctx_topk(ctx)
        self._restep(de)
        heapq.heappush(self.heap, (self.v + (req.gen - 1), self.seq, req, de))
        self.seq += 1
        self._reschedule()
        return now + self.step_s

    def _next(self, version: int) -> None:
        if version != self.version:
            return
        now = self.loop.now
        self._advance(now)
        heap = self.heap
        changed = {}
        finished = []
        while heap and heap[0][0] <= self.v + 1e-9:
            _, _, req, de = heapq.heappop(heap)
            de.batch -= 1
            de.ctx_sum -= req.decode_ctx
            de.min_sum -= self.cost.min_ctx_topk(req.decode_ctx)
            changed[de.id] = de
            finished.append((req, de))
        for de_id in sorted(changed):  # in the group's order (ids ascending), as every pass
            de = changed[de_id]
            if de.batch == 0:
                de.ctx_sum = de.min_sum = 0.0
            self._restep(de)
        self._reschedule()
        for req, de in finished:
            self.on_finish(req, de)
