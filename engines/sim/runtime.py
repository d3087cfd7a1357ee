"""A simulated run of one system over a trace: scheduling, storage reads, transfers and completion.

A round's life (DESIGN.md "Engine semantics"): it arrives (open loop across agents, closed loop inside
one) and waits in the global queue until the scheduler gives it a (PE, DE) pair, promising DE HBM for
its whole decode, and a read side; its hit KV is read from storage into that side's node buffer (node
read queue, bounded parallelism, the buffer's free space); the PE prefills it (layer-wise or whole-
request); the KV lands in the DE buffer, is copied to DE HBM, and decoding runs; the new KV is written
back to storage as a small low-priority flow. `oracle` skips every read, copy and transfer.
"""
from __future__ import annotations

import numpy as np

from engines.policy.dispatch import Dispatcher
from engines.policy.systems import SystemPolicy
from engines.sim.cluster import Cluster, ClusterShape, Engine, Node
from engines.sim.core import EventLoop
from engines.sim.decode import DecodeGroup
from engines.sim.links import Network
from engines.sim.prefill import PrefillGroup
from engines.sim.records import Recorder
from engines.sim.request import Request
from engines.costmodel.cost import CostModel

class Simulation:
    def __init__(self, workload, policy: SystemPolicy, cost: CostModel, shape: ClusterShape, *,
                 window_s: float, sink, progress=None):
        self.loop = EventLoop()
        self.net = Network(self.loop, window_s)
        self.cost = cost
        self.k = cost.k
        self.policy = policy
        self.layerwise = policy.layerwise
        self.free_io = policy.free_io
        self.cluster = Cluster(shape, cost, self.net)
        self.w = workload
        self.dirty = False
        self.progress = progress
        self.alpha = cost.alpha_tokens()
        self.beta = cost.beta_tokens(workload.hit_mean, workload.new_mean)
        self.dispatcher = Dispatcher(policy, self.cluster.pes, self.cluster.des, nodes=len(self.cluster.nodes),
                                     alpha=self.alpha, beta=self.beta, z_factor=self.k.de_z_factor)
        self.read_q = self.dispatcher.read_q  # tokens queued or being read per node (the scheduler's view)
        self.rec = Recorder(policy.name, sink, self.cluster, window_s, workload.agent_ids, self.read_q)
        self.groups = [
            PrefillGroup(i, g, self.loop, cost, layerwise=self.layerwise, streams=self.layerwise and not self.free_io,
                         chunked=policy.paper_scheduler, quota_s=self.k.compute_quota_s,
                         de_buffer=lambda req: self.cluster.nodes[req.de.node].buffer, load_kv=self.load_kv,
                         send_to_de=self.send_to_de, on_step=self.rec.steps, on_prefilled=self.prefill_done,
                         on_step_end=self.mark_dirty)
            for i, g in enumerate(self.cluster.pe_groups)]
        for node in self.cluster.nodes:
            node.buffer.on_free = lambda node=node: self.pump_reads(node)
        for pe in self.cluster.pes:
            pe.hbm.on_free = lambda pe=pe: self.pump_pe_hbm(pe)
        self.decoders = [DecodeGroup(g, self.loop, cost, self.finish) for g in self.cluster.de_groups]
        self.agents_left = workload.agents
        self.agent_done_t = np.full(workload.agents, np.nan)

    # ----- run ---------------------------------------------------------------------------------
    def run(self, until_s: float = float("inf")) -> dict:
        """Run to the end (or to `until_s`: rounds not finished by then are not recorded)."""
        w = self.w
        for a in range(w.agents):
            self.loop.at(w.first_send(a), self.arrive, a, 0)
        self.rec.start_sampler(self.loop, self.still_running)
        try:
            self.loop.run(until=until_s)
        finally:  # interrupted too (Ctrl-C): hand over every record made so far
            self.rec.finish(self.net, self.w, self.agent_done_t)
        done = self.agent_done_t[np.isfinite(self.agent_done_t)]
        return {"events": self.loop.events, "makespan_s": float(done.max()) if len(done) else float("nan"),
                "alpha_tokens": self.alpha, "beta_tokens": self.beta}

    def arrive(self, a: int, r: int) -> None:
        w = self.w
        i = w.offsets[a] + r
        req = Request(a, r, int(w.prompt[i]), int(w.hit[i]), int(w.gen[i]), self.loop.now, self.cost.kv_bytes_per_token)
        self.dispatcher.submit(req, req.length, req.hbm_need, req.hit)
        self.mark_dirty()

    def still_running(self) -> bool:
        """For the telemetry sampler: keep sampling while agents remain; a run whose only pending event
        is the sampler can never finish, which is a bug, not a result."""
        if self.agents_left <= 0:
            return False
        if len(self.loop) == 0:
            raise RuntimeError(f"simulation stalled at t={self.loop.now:.3f} s with {self.agents_left} agents left "
                               f"and {self.dispatcher.queued} requests queued")
        return True

    def mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.loop.at(self.loop.now, self.schedule)

    # ----- the global scheduler ----------------------------------------------------------------
    def schedule(self) -> None:
        """One dispatch pass of the shared scheduler (engines/policy/dispatch.py); apply its decisions."""
        self.dirty = False
        pes, des = self.cluster.pes, self.cluster.des
        for d in self.dispatcher.dispatch():
            self.dispatch(d.request, pes[d.pe], des[d.de], d.read_side)

    def dispatch(self, req: Request, pe: Engine, de: Engine, side: str) -> None:
        req.t_dispatch = self.loop.now
        req.pe, req.de = pe, de
        req.read_side = side
        if side == "none":
            req.t_read_start = req.t_read_done = self.loop.now
            self.pe_ready(req)
            return
        node = self.cluster.nodes[pe.node if side == "pe" else de.node]
        node.read_queue.append(req)
        self.pump_reads(node)

    # ----- storage reads and staging buffers -----------------------------------------------------
    def pump_reads(self, node: Node) -> None:
        k = self.k
        buffer = node.buffer
        while node.active_reads < k.read_parallelism and node.read_queue:
            req = node.read_queue[0]
            need = req.hit_bytes if req.read_side == "pe" else req.prompt_bytes
            if not buffer.fits(need):
                req.hold(self.loop.now)
                return  # the staging buffer is full: the SNIC idles until a consumer frees it
            node.read_queue.popleft()
            req.unhold(self.loop.now)
            req.alloc_s_at_read = req.alloc_s
            buffer.reserve(need)
            if req.read_side == "pe":
                req.pe_dram = need
            else:
                req.de_dram = need
            node.active_reads += 1
            req.t_read_start = self.loop.now
            self.loop.after(k.read_overhead_s, self.read_flow, node, req)

    def read_flow(self, node: Node, req: Request) -> None:
        req.read_bytes = int(req.hit_bytes)
        node.reader.start(req.hit_bytes, lambda: self.read_done(node, req))

    def read_done(self, node: Node, req: Request) -> None:
        node.active_reads -= 1
        self.dispatcher.read_done(node.id, req.hit)
        req.t_read_done = self.loop.now
        self.pump_reads(node)
        self.pe_ready(req)

    # ----- prefill -----------------------------------------------------------------------------
    def pe_ready(self, req: Request) -> None:
        pe = req.pe
        if self.layerwise or self.free_io:
            self.groups[pe.group].add_ready(pe, req)
            return
        pe.hbm_waiters.append(req)  # whole-request prefill: all its KV must be in HBM first
        self.pump_pe_hbm(pe)

    def pump_pe_hbm(self, pe: Engine) -> None:
        hbm = pe.hbm
        while pe.hbm_waiters:
            req = pe.hbm_waiters[0]
            need = req.prompt_bytes
            if not hbm.fits(need):
                req.hold(self.loop.now)
                return
            pe.hbm_waiters.popleft()
            req.unhold(self.loop.now)
            hbm.reserve(need)
            req.pe_hbm = need
            if req.hit_bytes > 0:
                self.net.start(req.hit_bytes, (pe.cnic_tx, pe.cnic_rx), (self.cluster.nodes[pe.node].dram_tx,),
                               "h2d", lambda r=req: self.h2d_done(r))
            else:
                self.h2d_done(req)

    def h2d_done(self, req: Request) -> None:
        pe = req.pe
        if req.pe_dram:
            self.cluster.nodes[pe.node].buffer.release(req.pe_dram)
            req.pe_dram = 0.0
        self.groups[pe.group].add_ready(pe, req)

    def load_kv(self, pe: Engine, req: Request, nbytes: float, on_done) -> None:
        """Layer-wise: stream a request's cached KV into the PE's HBM during a step."""
        if req.read_side == "de":
            de = req.de
            self.net.start(nbytes, (de.cnic_tx, pe.cnic_rx), (self.cluster.nodes[de.node].dram_tx,),
                           "kv_transfer", on_done)
        else:
            self.net.start(nbytes, (pe.cnic_tx, pe.cnic_rx), (self.cluster.nodes[pe.node].dram_tx,), "h2d", on_done)

    def send_to_de(self, pe: Engine, req: Request, nbytes: float) -> None:
        if nbytes <= 0:
            return
        de = req.de
        req.outstanding += 1
        self.net.start(nbytes, (pe.cnic_tx, de.cnic_rx), (self.cluster.nodes[de.node].dram_rx,), "kv_transfer",
                       lambda: self.sent(req))

    def sent(self, req: Request) -> None:
        req.outstanding -= 1
        if req.prefilled and req.outstanding == 0:
            self.to_decode(req)

    def prefill_done(self, pe: Engine, req: Request) -> None:
        req.t_first = self.loop.now
        req.prefilled = True
        self.dispatcher.prefill_done(pe.id, req.length)
        if req.pe_dram:  # layer-wise PE path: the last chunk has loaded its KV
            self.cluster.nodes[pe.node].buffer.release(req.pe_dram)
            req.pe_dram = 0.0
        if self.free_io:
            self.to_decode(req)
        elif not self.layerwise:
            self.send_whole(req)
        elif req.outstanding == 0:
            self.to_decode(req)

    def send_whole(self, req: Request) -> None:
        """Whole-request prefill: after compute, move the prompt's KV to the DE buffer (when it has room)."""
        node = self.cluster.nodes[req.de.node]

        def attempt() -> bool:
            if not node.buffer.fits(req.prompt_bytes):
                return False
            node.buffer.reserve(req.prompt_bytes)
            req.de_dram = req.prompt_bytes
            pe = req.pe
            req.outstanding += 1
            self.net.start(req.prompt_bytes, (pe.cnic_tx, req.de.cnic_rx), (node.dram_rx,), "kv_transfer",
                           lambda: self.whole_sent(req))
            return True

        node.buffer.wait(attempt)

    def whole_sent(self, req: Request) -> None:
        pe = req.pe
        nbytes, req.pe_hbm = req.pe_hbm, 0.0
        pe.hbm.release(nbytes)
        self.sent(req)

    # ----- decode ------------------------------------------------------------------------------
    def to_decode(self, req: Request) -> None:
        if req.gen <= 1:
            self.loop.at(self.loop.now, self.finish_early, req)
            return
        if self.free_io:
            self.decode_join(req)
            return
        de = req.de
        node = self.cluster.nodes[de.node]
        self.net.start(req.prompt_bytes, (de.cnic_tx, de.cnic_rx), (node.dram_tx,), "h2d", lambda: self.de_h2d_done(req))

    def de_h2d_done(self, req: Request) -> None:
        if req.de_dram:
            self.cluster.nodes[req.de.node].buffer.release(req.de_dram)
            req.de_dram = 0.0
        self.decode_join(req)

    def decode_join(self, req: Request) -> None:
        req.t_decode = self.loop.now
        req.t_second = self.decoders[req.de.group].join(req, req.de)

    def finish_early(self, req: Request) -> None:
        """A round with at most one output token is done when its first token is."""
        if req.de_dram:
            self.cluster.nodes[req.de.node].buffer.release(req.de_dram)
            req.de_dram = 0.0
        req.t_decode = req.t_second = self.loop.now
        self.finish(req, req.de)

    def finish(self, req: Request, de: Engine) -> None:
        now = self.loop.now
        req.t_done = now
        if req.t_second > now:  # predicted at decode start; the batch may have shrunk since
            req.t_second = now
        self.dispatcher.decode_done(de.id, req.length, req.hbm_need)
        if not self.free_io:  # write-back of the new KV: low priority, never a bottleneck (~2 % of reads)
            node = self.cluster.nodes[de.node]
            nbytes = (req.new + req.gen) * req.kv
            self.net.record((node.snic_tx, node.dram_tx), "kv_write", now, now + nbytes / node.snic_tx.capacity, nbytes)
        self.rec.request(req, self.w)
        if self.progress is not None:
            self.progress(1)
        w = self.w
        a = req.agent
        if req.round + 1 < w.rounds[a]:
            self.loop.at(w.next_send(a, req.round + 1, now), self.arrive, a, req.round + 1)
        else:
            self.agent_done_t[a] = now
            self.agents_left -= 1
        self.mark_dirty()

