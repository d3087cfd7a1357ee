"""Prefill engine groups: batch formation per PE and one event per expert-parallel group step.

A step's time is the slowest PE's attention (data-parallel) plus the group's shared FFN plus fixed
overheads (a dense model has no expert parallelism: the slowest PE's attention plus its own FFN). With layer-wise prefill the hit KV streams into HBM layer by layer while the batch
computes (PE path: H2D from the PE node's buffer; DE path: RDMA from the DE node's buffer), and each
layer's KV streams out to the DE buffer: the step ends at max(compute, last load + one layer of
compute), the overlap computed rather than simulated layer by layer. Whole-request prefill (basic)
computes only requests whose KV is already in HBM, and sends their KV to the DE after the step; its
PE first submits the H2D copies of each new request's hit KV (`copy_submit_s`), serial with compute.
"""
from __future__ import annotations

import itertools
from typing import Callable

from sortedcontainers import SortedList

from engines.costmodel.cost import CostModel
from engines.policy import pack_chunked, pack_whole
from engines.sim.capacity import Capacity
from engines.sim.cluster import Engine
from engines.sim.core import EventLoop

_ready_order = itertools.count()  # FIFO position of a request in its PE's ready queue (unique, any run)


class PrefillGroup:
    """One expert-parallel prefill group. It needs a loop, a cost model, the DE-side staging buffer of a
    request (`de_buffer`), and callbacks: `load_kv(pe, req, nbytes, on_done)` (layer-wise: cached KV
    into HBM), `send_to_de(pe, req, nbytes)`, `on_step([(pe, batch), ...], step_s, now)` (telemetry: a row per PE),
    `on_prefilled(pe, req)` (its first token) and `on_step_end()` (PE load changed: schedule again)."""

    def __init__(self, index: int, pes: list[Engine], loop: EventLoop, cost: CostModel, *, layerwise: bool,
                 streams: bool, chunked: bool, quota_s: float, de_buffer: Callable[[object], Capacity],
                 load_kv: Callable, send_to_de: Callable, on_step: Callable, on_prefilled: Callable,
                 on_step_end: Callable[[], None]):
        self.index = index
        self.pes = pes
        for pe in pes:
            pe.ready = SortedList()  # (order, request): ready to compute, FIFO; parked requests leave it
        self.loop = loop
        self.cost = cost
        self.layerwise = layerwise
        self.streams = streams  # layer-wise with real I/O: KV streams in and out while the batch computes
        self.chunked = chunked
        self.quota_s = quota_s
        self.de_buffer = de_buffer
        self.load_kv = load_kv
        self.send_to_de = send_to_de
        self.on_step = on_step
        self.on_prefilled = on_prefilled
        self.on_step_end = on_step_end
        self.busy = False
        self.items: list[tuple[Engine, list]] = []
        self.t0 = 0.0
        self.compute_s = 0.0
        self.loads_pending = 0
        self.compute_done = False
        self.t_loads_done = 0.0
        self.parked: dict[Capacity, list] = {}       # requests waiting for room in a DE buffer, by buffer
        self._wakers: dict[Capacity, Callable] = {}  # one watcher per buffer: unpark, then kick

    def add_ready(self, pe: Engine, req) -> None:
        """`req` can be computed on `pe` (its KV is loadable or in HBM): queue it and try a step."""
        req.ready_order = next(_ready_order)
        pe.ready.add((req.ready_order, req))
        self.kick()

    # ----- batch formation -----------------------------------------------------------------------
    def _needs_de_buffer(self, req) -> bool:
        """Layer-wise prefill streams a PE-path request's whole KV to its DE buffer from its first chunk."""
        return self.streams and req.chunks == 0 and req.read_side != "de"

    def _candidates(self, pe: Engine, park: list, out: list):
        """This PE's ready requests in order, less those whose DE buffer has no room (held: parked until
        that buffer frees, or skipped when only this batch's own reservations crowd it out), as the
        (cached, remaining) shapes batching packs; each request yielded is appended to `out`."""
        now = self.loop.now
        reserve: dict[Capacity, float] = {}
        for _, req in pe.ready:
            if self._needs_de_buffer(req):
                buf = self.de_buffer(req)
                need = req.prompt_bytes
                extra = reserve.get(buf, 0.0)
                if not buf.fits(need, extra):
                    req.hold(now)
                    buf.watch(self._waker(buf))
                    if not buf.fits(need):  # no room until the buffer frees
                        park.append((pe, req, buf))
                    continue
                reserve[buf] = extra + need
            out.append(req)
            yield req.cached_now, req.remaining

    def _waker(self, buf: Capacity) -> Callable[[], None]:
        waker = self._wakers.get(buf)
        if waker is None:
            def waker() -> None:
                for pe, req in self.parked.pop(buf, ()):
                    pe.ready.add((req.ready_order, req))
                self.kick()
            self._wakers[buf] = waker
        return waker

    def _form(self, pe: Engine) -> list:
        """Pick this PE's batch: [(request, tokens, attention_s)]; reserves DE buffers for PE-path KV."""
        cost = self.cost
        candidates: list = []
        park: list = []
        shapes = self._candidates(pe, park, candidates)
        if self.chunked:
            packed = pack_chunked(shapes, cost.prefill_attention_s, cost.max_chunk, self.quota_s, cost.batch_speed)
        else:
            packed = pack_whole(shapes, cost.prefill_attention_s, self.quota_s, cost.batch_speed)
        for p, req, buf in park:
            pe.ready.remove((req.ready_order, req))
            self.parked.setdefault(buf, []).append((p, req))
        out = []
        now = self.loop.now
        for item in packed:
            req = candidates[item.index]
            if self._needs_de_buffer(req):
                self.de_buffer(req).reserve(req.prompt_bytes)
                req.de_dram += req.prompt_bytes
                req.unhold(now)
            out.append((req, item.tokens, item.attention_s))
        return out

    def kick(self) -> None:
        """Start a step if the group is idle and some PE has ready work."""
        if self.busy:
            return
        items = []
        tokens = 0
        requests = 0
        attn_max = 0.0
        cost = self.cost
        dense_max = 0.0  # a dense model has no expert parallelism: each GPU runs its own tokens' FFN
        for pe in self.pes:
            if not pe.ready:
                continue
            batch = self._form(pe)
            if batch:
                speed = cost.batch_speed(len(batch))
                batch = [(req, ntok, attn / speed) for req, ntok, attn in batch]  # batch-size efficiency
                items.append((pe, batch))
                gpu_s = sum(b[2] for b in batch) + self._copy_submit_s(batch)  # this GPU before the FFN
                ntok = sum(b[1] for b in batch)
                attn_max = max(attn_max, gpu_s)
                if not cost.is_moe:
                    dense_max = max(dense_max, gpu_s + cost.prefill_ffn_s(ntok, 1) / speed)
                tokens += ntok
                requests += len(batch)
        if not items:
            return
        if cost.is_moe:  # expert-parallel FFN shared by the group, after every GPU's attention
            ep = len(self.pes)
            compute = attn_max + cost.prefill_ffn_s(tokens, ep) / cost.batch_speed(requests / ep)
        else:
            compute = dense_max
        self.compute_s = compute + cost.prefill_step_overhead_s
        self.busy = True
        self.items = items
        self.t0 = self.loop.now
        self.loads_pending = 0
        self.compute_done = False
        self.t_loads_done = self.t0
        if self.streams:
            for pe, batch in items:
                for req, ntok, _ in batch:
                    self._start_streams(pe, req, ntok)
        self.loop.after(self.compute_s, self._compute_end)

    def _copy_submit_s(self, batch) -> float:
        """Whole-request prefill: the CPU time to submit the H2D copies of the batch's hit KV, one
        cudaMemcpyAsync per block per layer (DRAM holds Full Blocks, HBM a buffer per layer), serial with
        compute (paper 5.2: 5-7 us a submission). Layer-wise prefill overlaps its loads with compute."""
        per_copy = self.cost.k.copy_submit_s
        if self.layerwise or per_copy <= 0:
            return 0.0
        block, layers = self.cost.k.kv_block_tokens, self.cost.model.layers
        blocks = sum(-(-req.cached_now // block) for req, _, _ in batch if req.chunks == 0)
        return blocks * layers * per_copy

    def _start_streams(self, pe: Engine, req, ntok: int) -> None:
        """Layer-wise: load this request's cached KV into HBM and stream its new (PE path: all) KV out.

        On the PE path the loads (local H2D) and the outgoing stream both leave through the PE's CNIC;
        layer k goes out only after layer k came in and was computed, so the outgoing stream starts when
        the load is done. On the DE path they cross the CNIC in opposite directions and overlap."""
        load = req.cached_now * req.kv
        pe_path = req.read_side != "de"
        out = ntok * req.kv + (req.hit_bytes if req.chunks == 0 and pe_path else 0.0)
        if load > 0 and pe_path:
            req.outstanding += 1  # the outgoing stream, once the load is in
            self.loads_pending += 1

            def loaded() -> None:
                req.outstanding -= 1
                self.send_to_de(pe, req, out)
                self._load_done()
            self.load_kv(pe, req, load, loaded)
            return
        if load > 0:
            self.loads_pending += 1
            self.load_kv(pe, req, load, self._load_done)
        self.send_to_de(pe, req, out)

    def _load_done(self) -> None:
        self.loads_pending -= 1
        if self.loads_pending == 0:
            self.t_loads_done = self.loop.now
            if self.compute_done:
                self._finish_after_last_layer()

    def _compute_end(self) -> None:
        self.compute_done = True
        if self.loads_pending == 0:
            self._finish_after_last_layer()

    def _finish_after_last_layer(self) -> None:
        """The last layer can only compute after its KV arrived: end >= last load + one layer."""
        layer_s = self.compute_s / self.cost.model.layers
        end = max(self.loop.now, self.t_loads_done + layer_s)
        self.loop.at(end, self._step_end)

    def _step_end(self) -> None:
        now = self.loop.now
        step_s = now - self.t0
        items, self.items = self.items, []
        self.busy = False
        active = {pe.id for pe, _ in items}
        # every GPU of the group took part in the step, idle ones with no attention (telemetry rows first)
        self.on_step([(pe, ()) for pe in self.pes if pe.id not in active] + items, step_s, now)
        for pe, batch in items:
            done = []
            for req, ntok, _ in batch:
                req.remaining -= ntok
                req.cached_now += ntok
                req.chunks += 1
                if req.remaining <= 0:
                    done.append(req)
            for req in done:
                pe.ready.remove((req.ready_order, req))
            for req in done:
                self.on_prefilled(pe, req)
        self.on_step_end()
        self.kick()
