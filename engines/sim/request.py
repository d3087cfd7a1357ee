"""One round of an agent, as the simulator tracks it from arrival to its last token."""
from __future__ import annotations

import math

NAN = math.nan


class Request:
    __slots__ = ("agent", "round", "prompt", "hit", "new", "gen", "length", "kv", "hbm_need",
                 "t_sched", "t_dispatch", "t_read_start", "t_read_done", "t_first", "t_second",
                 "t_decode", "t_done", "pe", "de", "read_side", "remaining", "cached_now", "chunks",
                 "outstanding", "prefilled", "pe_dram", "de_dram", "pe_hbm", "decode_ctx", "read_bytes",
                 "t_held", "alloc_s", "alloc_s_at_read", "ready_order", "hit_bytes", "prompt_bytes")

    def __init__(self, agent: int, rnd: int, prompt: int, hit: int, gen: int, t_sched: float, kv_per_token: float):
        self.agent = agent
        self.round = rnd
        self.prompt = prompt
        self.hit = hit
        self.new = prompt - hit
        self.gen = gen
        self.length = prompt                       # the scheduler's token count for the request
        self.kv = kv_per_token
        self.hbm_need = (prompt + gen) * kv_per_token  # DE HBM for its whole decode
        self.hit_bytes = hit * kv_per_token            # KV bytes read from storage
        self.prompt_bytes = prompt * kv_per_token      # KV bytes of the whole prompt
        self.t_sched = t_sched
        self.t_dispatch = self.t_read_start = self.t_read_done = NAN
        self.t_first = self.t_second = self.t_decode = self.t_done = NAN
        self.pe = None
        self.de = None
        self.read_side = "none"
        self.remaining = prompt - hit               # tokens still to prefill
        self.cached_now = hit                       # KV tokens available to the next chunk
        self.chunks = 0
        self.outstanding = 0                        # PE->DE transfers in flight
        self.prefilled = False
        self.pe_dram = 0.0                          # staging-buffer bytes held on the PE node
        self.de_dram = 0.0                          # ... and on the DE node
        self.pe_hbm = 0.0                           # PE HBM held (whole-request prefill)
        self.decode_ctx = 0.0
        self.read_bytes = 0
        self.t_held = NAN                           # since when a full buffer holds it back (NaN: it is not held)
        self.alloc_s = 0.0                          # time held back by full buffers (staging DRAM, PE HBM)
        self.alloc_s_at_read = 0.0                  # ... of which before its storage read started
        self.ready_order = 0                        # its place in its PE's ready queue

    def hold(self, now: float) -> None:
        """A full buffer (staging DRAM, PE HBM, the DE buffer) keeps this request waiting from now."""
        if self.t_held != self.t_held:
            self.t_held = now

    def unhold(self, now: float) -> None:
        if self.t_held == self.t_held:
            self.alloc_s += now - self.t_held
            self.t_held = NAN
