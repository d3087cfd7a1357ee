"""What the simulator records, in the results contract's columns (DESIGN.md), handed to a sink.

The sink is any object with `requests(batch)`, `agents(batch)`, `links(batch)` and `engines(batch)`
(columnar dicts); the harness's results writer is one, `MemorySink` another. Rows are flushed in
batches so a long run streams its records instead of holding them.
"""
from __future__ import annotations

import math

import numpy as np

from engines.contract import ENGINE_COLUMNS

FLUSH_ROWS = 50_000


class MemorySink:
    """Collects every batch in memory (tests, calibration)."""

    def __init__(self):
        self.tables: dict[str, dict[str, list]] = {}

    def _add(self, kind: str, batch: dict) -> None:
        table = self.tables.setdefault(kind, {k: [] for k in batch})
        for k, v in batch.items():
            table.setdefault(k, []).extend(list(v))

    def requests(self, batch): self._add("requests", batch)
    def agents(self, batch): self._add("agents", batch)
    def links(self, batch): self._add("links", batch)
    def engines(self, batch): self._add("engines", batch)


class Recorder:
    def __init__(self, system: str, sink, cluster, window_s: float, agent_ids, read_q):
        self.system = system
        self.read_q = read_q  # tokens queued or being read per node
        self.sink = sink
        self.cluster = cluster
        self.window_s = window_s
        self.done: list = []
        self.agent_ids = agent_ids
        self.eng = {k: [] for k in ENGINE_COLUMNS}

    def request(self, r, w) -> None:
        self.done.append(r)
        if len(self.done) >= FLUSH_ROWS:
            self._flush_requests()

    def steps(self, rows, step_s: float, now: float) -> None:
        """One prefill group step: a row per PE, `rows` = [(pe, batch)], batch = [(request, tokens, attention_s)]."""
        d = self.eng
        n = len(rows)
        read_q = self.read_q
        d["system"].extend([self.system] * n)
        d["t"].extend([now - step_s] * n)
        d["engine"].extend([pe.name for pe, _ in rows])
        d["role"].extend(["prefill"] * n)
        tokens, attention = d["batch_tokens"], d["attention_s"]
        for _, batch in rows:
            ntok, attn = 0, 0.0
            for b in batch:
                ntok += b[1]
                attn += b[2]
            tokens.append(int(ntok))
            attention.append(attn)
        d["batch_requests"].extend([len(batch) for _, batch in rows])
        d["step_s"].extend([step_s] * n)
        d["queued_tokens"].extend([int(pe.tok) for pe, _ in rows])
        d["read_queue_tokens"].extend([int(read_q[pe.node]) for pe, _ in rows])
        d["group"].extend([pe.group for pe, _ in rows])
        if len(d["t"]) >= FLUSH_ROWS:
            self._flush_engines()

    def start_sampler(self, loop, running) -> None:
        """Decode engines are sampled once per telemetry window (one row per DE per window)."""
        def sample():
            now = loop.now
            d = self.eng
            for de in self.cluster.des:
                d["system"].append(self.system)
                d["t"].append(now)
                d["engine"].append(de.name)
                d["role"].append("decode")
                d["batch_requests"].append(de.batch)
                d["batch_tokens"].append(int(de.ctx_sum))
                d["attention_s"].append(math.nan)
                d["step_s"].append(de.step_s)
                d["queued_tokens"].append(int(de.tok))
                d["read_queue_tokens"].append(int(self.read_q[de.node]))
                d["group"].append(de.group)
            if len(d["t"]) >= FLUSH_ROWS:
                self._flush_engines()
            if running():
                loop.after(self.window_s, sample)
        loop.at(0.0, sample)

    def _flush_requests(self) -> None:
        rs, self.done = self.done, []
        if not rs:
            return
        ids = self.agent_ids
        self.sink.requests({
            "system": [self.system] * len(rs),
            "agent_id": [str(ids[r.agent]) for r in rs],
            "round": [r.round for r in rs],
            "t_scheduled": [r.t_sched for r in rs],
            "t_sent": [r.t_sched for r in rs],  # the simulated client sends exactly on schedule
            "t_first_token": [r.t_first for r in rs],
            "t_second_token": [r.t_second for r in rs],
            "t_done": [r.t_done for r in rs],
            "prompt_tokens": [r.prompt for r in rs],
            "expected_cached_tokens": [r.hit for r in rs],
            "cached_tokens": [r.hit for r in rs],
            "output_tokens": [r.gen for r in rs],
            "pe": [r.pe.name for r in rs],
            "de": [r.de.name for r in rs],
            "read_side": [r.read_side for r in rs],
            "read_bytes": [r.read_bytes for r in rs],
            # TTFT = queue + alloc + read + prefill: waiting for the scheduler and the node's read queue;
            # held back by full buffers (staging DRAM before the read, PE HBM or the DE buffer after it);
            # the storage read; the rest to the first token (H2D, batching, compute)
            "queue_s": [r.t_read_start - r.t_sched - r.alloc_s_at_read for r in rs],
            "alloc_s": [r.alloc_s for r in rs],
            "read_s": [r.t_read_done - r.t_read_start for r in rs],
            "prefill_s": [r.t_first - r.t_read_done - (r.alloc_s - r.alloc_s_at_read) for r in rs],
            "kv_transfer_s": [r.t_decode - r.t_first for r in rs],
            "status": ["ok"] * len(rs),
            "error": [None] * len(rs),
        })

    def _flush_engines(self) -> None:
        if self.eng["t"]:
            self.sink.engines(self.eng)
            self.eng = {k: [] for k in ENGINE_COLUMNS}

    def finish(self, net, w, agent_done_t: np.ndarray) -> None:
        self._flush_requests()
        self._flush_engines()
        self.sink.links(net.telemetry_rows(self.system, self.cluster.node_names))
        start = np.array([w.first_send(a) for a in range(w.agents)])
        done = np.asarray(agent_done_t, dtype=float)
        self.sink.agents({
            "system": [self.system] * w.agents,
            "agent_id": [str(x) for x in w.agent_ids],
            "t_arrival": start.tolist(),
            "t_done": done.tolist(),
            "rounds": list(w.rounds),
            "jct_s": (done - start).tolist(),
            "status": ["ok" if np.isfinite(t) else "cancelled" for t in done],
        })


class NullSink:
    """Discards every record (calibration and benchmarks that only need the run facts)."""

    def requests(self, batch): pass
    def agents(self, batch): pass
    def links(self, batch): pass
    def engines(self, batch): pass
