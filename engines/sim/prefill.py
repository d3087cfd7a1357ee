"""Prefill engine groups: batch formation per PE and one event per expert-parallel group step.

A step's time is the slowest PE's attention (data-parallel) plus the group's shared FFN plus fixed
overheads. With layer-wise prefill the hit KV streams into HBM layer by layer while the batch
computes (PE path: H2D from the PE node's buffer; DE path: RDMA from the DE node's buffer), and each
layer's KV streams out to the DE buffer: the step ends at max(compute, last load + one layer of
compute), the overlap computed rather than simulated layer by layer. Whole-request prefill (basic)
computes only requests whose KV is already in HBM, and sends their KV to the DE after the step.
"""
from __future__ import annotations

from engines.policy import pack_chunked, pack_whole
from engines.sim.cluster import Engine

PACK_WINDOW = 256  # ready requests a PE looks at when forming a batch


class PrefillGroup:
    def __init__(self, index: int, pes: list[Engine], sim):
        self.index = index
        self.pes = pes
        self.sim = sim
        self.busy = False
        self.items: list[tuple[Engine, list]] = []
        self.t0 = 0.0
        self.compute_s = 0.0
        self.loads_pending = 0
        self.compute_done = False
        self.t_loads_done = 0.0

    # ----- batch formation -----------------------------------------------------------------------
    def _form(self, pe: Engine) -> list:
        """Pick this PE's batch: [(request, tokens, attention_s)]; reserves DE buffers for PE-path KV."""
        sim = self.sim
        cost = sim.cost
        candidates = []
        reserve: dict[int, float] = {}
        for req in pe.ready:
            if len(candidates) >= PACK_WINDOW:
                break
            if sim.layerwise and not sim.free_io and req.chunks == 0 and req.read_side != "de":
                node = sim.cluster.nodes[req.de.node]
                need = req.prompt_bytes
                extra = reserve.get(node.id, 0.0)
                if node.dram_used + extra + need > node.dram_cap and (node.dram_used + extra) > 0:
                    node.blocked_groups[self] = None  # kick this group when that buffer frees
                    req.hold(sim.loop.now)
                    continue  # its DE buffer is full: leave it for a later step
                reserve[node.id] = extra + need
            candidates.append(req)
        if not candidates:
            return []
        shapes = [(r.cached_now, r.remaining) for r in candidates]
        if sim.policy.paper_scheduler:
            packed = pack_chunked(shapes, cost.prefill_attention_s, cost.max_chunk, sim.k.compute_quota_s,
                                  cost.batch_speed)
        else:
            packed = pack_whole(shapes, cost.prefill_attention_s, sim.k.compute_quota_s, cost.batch_speed)
        out = []
        for item in packed:
            req = candidates[item.index]
            if sim.layerwise and not sim.free_io and req.chunks == 0 and req.read_side != "de":
                sim.reserve(sim.cluster.nodes[req.de.node], req.prompt_bytes)
                req.de_dram += req.prompt_bytes
                req.unhold(sim.loop.now)
            out.append((req, item.tokens, item.attention_s))
        return out

    def kick(self) -> None:
        """Start a step if the group is idle and some PE has ready work."""
        if self.busy:
            return
        sim = self.sim
        items = []
        tokens = 0
        requests = 0
        attn_max = 0.0
        cost = sim.cost
        for pe in self.pes:
            if not pe.ready:
                continue
            batch = self._form(pe)
            if batch:
                speed = cost.batch_speed(len(batch))
                batch = [(req, ntok, attn / speed) for req, ntok, attn in batch]  # batch-size efficiency
                items.append((pe, batch))
                attn_max = max(attn_max, sum(b[2] for b in batch))
                tokens += sum(b[1] for b in batch)
                requests += len(batch)
        if not items:
            return
        ep = len(self.pes) if cost.is_moe else 1
        ffn = cost.prefill_ffn_s(tokens, ep) / cost.batch_speed(requests / ep)
        self.compute_s = attn_max + ffn + cost.prefill_step_overhead_s
        self.busy = True
        self.items = items
        self.t0 = sim.loop.now
        self.loads_pending = 0
        self.compute_done = False
        self.t_loads_done = self.t0
        if sim.layerwise and not sim.free_io:
            for pe, batch in items:
                for req, ntok, _ in batch:
                    self._start_streams(pe, req, ntok)
        sim.loop.after(self.compute_s, self._compute_end)

    def _start_streams(self, pe: Engine, req, ntok: int) -> None:
        """Layer-wise: load this request's cached KV into HBM and stream its new (PE path: all) KV out.

        On the PE path the loads (local H2D) and the outgoing stream both leave through the PE's CNIC;
        layer k goes out only after layer k came in and was computed, so the outgoing stream starts when
        the load is done. On the DE path they cross the CNIC in opposite directions and overlap."""
        sim = self.sim
        load = req.cached_now * req.kv
        pe_path = req.read_side != "de"
        out = ntok * req.kv + (req.hit_bytes if req.chunks == 0 and pe_path else 0.0)
        if load > 0 and pe_path:
            req.outstanding += 1  # the outgoing stream, once the load is in
            self.loads_pending += 1

            def loaded() -> None:
                req.outstanding -= 1
                sim.send_to_de(pe, req, out)
                self._load_done()
            sim.load_kv(pe, req, load, loaded)
            return
        if load > 0:
            self.loads_pending += 1
            sim.load_kv(pe, req, load, self._load_done)
        sim.send_to_de(pe, req, out)

    def _load_done(self) -> None:
        self.loads_pending -= 1
        if self.loads_pending == 0:
            self.t_loads_done = self.sim.loop.now
            if self.compute_done:
                self._finish_after_last_layer()

    def _compute_end(self) -> None:
        self.compute_done = True
        if self.loads_pending == 0:
            self._finish_after_last_layer()

    def _finish_after_last_layer(self) -> None:
        """The last layer can only compute after its KV arrived: end >= last load + one layer."""
        sim = self.sim
        layer_s = self.compute_s / sim.cost.model.layers
        end = max(sim.loop.now, self.t_loads_done + layer_s)
        sim.loop.at(end, self._step_end)

    def _step_end(self) -> None:
        sim = self.sim
        now = sim.loop.now
        step_s = now - self.t0
        items, self.items = self.items, []
        self.busy = False
        active = {pe.id for pe, _ in items}
        for pe in self.pes:  # every GPU of the group took part in the step, idle ones with no attention
            if pe.id not in active:
                sim.record_step(pe, (), step_s, now)
        for pe, batch in items:
            done = set()
            for req, ntok, _ in batch:
                req.remaining -= ntok
                req.cached_now += ntok
                req.chunks += 1
                if req.remaining <= 0:
                    done.add(id(req))
            sim.record_step(pe, batch, step_s, now)
            if done:
                pe.ready = type(pe.ready)(r for r in pe.ready if id(r) not in done)
            for req, _, _ in batch:
                if id(req) in done:
                    sim.prefill_done(pe, req)
        sim.mark_dirty()
        self.kick()
