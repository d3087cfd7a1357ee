"""Occupancy of the capacity resources (`pe_hbm`, `de_hbm`, `dram_buffer`), rebuilt from the requests table.

The simulator keeps no record of what its buffers hold, so each request's holdings are rebuilt from its row:
the times follow from `t_sent` and the TTFT breakdown (TTFT = queue_s + alloc_s + read_s + prefill_s, then
kv_transfer_s to the decode engine), the sizes from its tokens and the model's KV bytes per token:

    read start  rs = t_sent + queue_s + alloc_s       read done  rd = rs + read_s
    first token tf = rd + prefill_s                   decoding   td = tf + kv_transfer_s

Some holdings start at a known time, others somewhere in a span the row bounds; those are admitted by
replaying the simulator's rule (first come, first served, when the bytes fit in the engine's or node's
capacity, or when nothing is held) against the holdings already there, and never later than the span's end:

- `pe_hbm` (whole-request prefill only: layer-wise holds one layer's KV, the oracle none): the prompt's
  KV on its PE, admitted in [rd, tf), released at td (after the transfer to the decode node).
- `dram_buffer` (each node's staging buffer): the cached KV read on the PE side from rs to its HBM
  admission (whole-request) or to tf (layer-wise); the prompt's KV in the DE node's buffer, admitted in
  [tf, td) (whole-request: sent after compute) or [rd, tf) (layer-wise: streamed during compute), released
  at td; a DE-side read holds the prompt's KV from rs to td.
- `de_hbm`: the KV promised on the decode engine (prompt and output tokens) from rs to `t_done`.

Waits: `pe_hbm`'s is each request's replayed admission delay; `dram_buffer`'s is the rest of its `alloc_s`
(and, layer-wise, the DE buffer's admission delay), as shares of the mean TTFT. What it approximates: the
table gives `alloc_s` as one sum, so the read is placed after all of it (rs at most `alloc_s` late); the
replay admits in order of earliest start, where the simulator's prefill scheduler may pick another order;
the DE HBM is promised at dispatch, inside `queue_s` (rs is used), and waits for it happen in the
scheduler, inside `queue_s`: not separable here.
"""
from __future__ import annotations

import heapq
from typing import Mapping

import numpy as np
import pandas as pd

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec
from engines.policy import system_policy


def capacity_bytes(scenario: Mapping) -> tuple[dict[str, float], int, dict[str, float]]:
    """({resource: bytes the whole cluster holds}, KV bytes per token, {pe_hbm_one: one PE's,
    dram_buffer_one: one node's}) from the resolved profiles."""
    model, hw = model_spec(scenario["model"]), hardware_spec(scenario["hardware"])
    const = SimConstants().with_overrides(scenario.get("sim"))
    cl = scenario["cluster"]
    p, d = int(cl["prefill_nodes"]), int(cl["decode_nodes"])
    pg = min(int(cl.get("prefill_group_nodes") or min(p, 2)), p) * hw.gpus_per_node
    dg = min(int(cl.get("decode_group_nodes") or min(d, 4)), d) * hw.gpus_per_node
    cost = CostModel(model, hw, const, prefill_ep=pg, decode_ep=dg)
    buffer = float(cl.get("dram_buffer_gb") or model.dram_buffer_gb) * 1e9
    return ({"pe_hbm": cost.prefill_kv_capacity_bytes() * p * hw.gpus_per_node,
             "de_hbm": cost.decode_kv_capacity_bytes() * d * hw.gpus_per_node,
             "dram_buffer": buffer * (p + d)}, model.kv_bytes_per_token,
            {"pe_hbm_one": cost.prefill_kv_capacity_bytes(), "dram_buffer_one": buffer})


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(df[name], errors="coerce").fillna(0).to_numpy(float) if name in df else np.zeros(len(df))


def admit(lo: np.ndarray, hi: np.ndarray, end: np.ndarray, nbytes: np.ndarray, key: np.ndarray, cap: float,
          fixed: np.ndarray) -> np.ndarray:
    """Admission times: `fixed` holdings at `lo`; the others first come, first served per `key` (an engine
    or node of `cap` bytes), when their bytes fit beside what is held (or nothing is), at most at `hi`."""
    at = lo.copy()
    for k in np.unique(key):
        idx = np.nonzero(key == k)[0]
        idx = idx[np.lexsort((~fixed[idx], lo[idx]))]  # by earliest start; a fixed one first at a tie
        held: list[tuple[float, float]] = []  # heap of (release, bytes)
        used, clock = 0.0, -np.inf
        for i in idx:
            a = lo[i] if fixed[i] else max(lo[i], clock)
            while held and held[0][0] <= a:
                used -= heapq.heappop(held)[1]
            if not fixed[i]:
                while held and used + nbytes[i] > cap and used > 1e-6 and a < hi[i]:
                    t, b = heapq.heappop(held)
                    used -= b
                    a = max(a, t)
                a = min(a, hi[i])
                clock = a
            at[i] = a
            if end[i] > a:
                heapq.heappush(held, (end[i], nbytes[i]))
                used += nbytes[i]
    return at


def holdings(requests: pd.DataFrame, system: str, kv_bytes: float, caps: Mapping[str, float] | None = None
             ) -> dict[str, tuple]:
    """{resource: (start, end, bytes)} arrays of what each request holds, and `waits`: per request, the
    seconds it waited on `pe_hbm` and `dram_buffer` (see the module's docstring). `caps`: bytes of one
    PE's HBM (`pe_hbm_one`) and one node's buffer (`dram_buffer_one`); without them nothing waits."""
    ok = requests[requests["status"].astype(str) == "ok"] if len(requests) else requests
    n = len(ok)
    caps = caps or {"pe_hbm_one": np.inf, "dram_buffer_one": np.inf}
    policy = system_policy(system)
    s = pd.to_numeric(ok["t_sent"]).to_numpy(float) if n else np.zeros(0)
    alloc = _col(ok, "alloc_s")
    rs = s + _col(ok, "queue_s") + alloc
    rd = rs + _col(ok, "read_s")
    tf = rd + _col(ok, "prefill_s")
    td = tf + _col(ok, "kv_transfer_s")
    done = pd.to_numeric(ok["t_done"]).to_numpy(float) if n else np.zeros(0)
    prompt = _col(ok, "prompt_tokens") * kv_bytes
    hit = _col(ok, "cached_tokens") * kv_bytes
    side = ok["read_side"].astype(str).to_numpy() if "read_side" in ok else np.full(n, "pe")
    pe = ok["pe"].astype(str).to_numpy() if "pe" in ok else np.full(n, "pe")
    de = ok["de"].astype(str).to_numpy() if "de" in ok else np.full(n, "de")
    whole = not (policy.layerwise or policy.free_io)
    empty = (np.zeros(0),) * 3
    out = {"de_hbm": (rs, done, prompt + _col(ok, "output_tokens") * kv_bytes),
           "waits": {"pe_hbm": np.zeros(n), "dram_buffer": np.zeros(n)}}
    if policy.free_io:
        return {**out, "pe_hbm": empty, "dram_buffer": empty}
    if whole:
        hbm_at = admit(rd, tf, td, prompt, pe, caps["pe_hbm_one"], np.zeros(n, bool))
        out["pe_hbm"] = (hbm_at, td, prompt)
        out["waits"]["pe_hbm"] = hbm_at - rd
    else:
        hbm_at = tf
        out["pe_hbm"] = empty
    on_de = side == "de"
    node = lambda engines: np.array([e.split(".")[0] for e in engines], dtype=object)  # noqa: E731
    # one node's buffer: PE-side reads (fixed), DE-side reads (fixed), prompts arriving at the DE (replayed)
    lo = np.r_[rs[~on_de], rs[on_de], (tf if whole else rd)[~on_de]]
    hi = np.r_[rs[~on_de], rs[on_de], (td if whole else tf)[~on_de]]
    end = np.r_[hbm_at[~on_de], td[on_de], td[~on_de]]
    nbytes = np.r_[hit[~on_de], prompt[on_de], prompt[~on_de]]
    key = np.r_[node(pe[~on_de]), node(de[on_de]), node(de[~on_de])]
    fixed = np.r_[np.ones((~on_de).sum() + on_de.sum(), bool), np.zeros((~on_de).sum(), bool)]
    at = admit(lo, hi, end, nbytes, key, caps["dram_buffer_one"], fixed)
    out["dram_buffer"] = (at, end, nbytes)
    buf_wait = np.zeros(n)
    if not whole:  # layer-wise: waiting for the DE buffer delays the first token
        buf_wait[~on_de] = (at - lo)[-(~on_de).sum():] if (~on_de).any() else 0.0
    out["waits"]["dram_buffer"] = np.clip(np.maximum(alloc, buf_wait) - out["waits"]["pe_hbm"], 0, None)
    return out


def mean_held(held: tuple, a: float, b: float) -> float:
    """Time-mean of the bytes held in [a, b)."""
    start, end, nbytes = held
    if b <= a or not len(start):
        return 0.0
    overlap = np.clip(np.minimum(end, b) - np.maximum(start, a), 0, None)
    return float((nbytes * overlap).sum() / (b - a))


def occupancy(scenario: Mapping, requests: pd.DataFrame, system: str,
              windows: Mapping[str, tuple[float, float]]) -> dict:
    """{window: {resource: occupancy share}} and the share of the mean TTFT requests waited on each."""
    caps, kv_bytes, one = capacity_bytes(scenario)
    held = holdings(requests, system, kv_bytes, one)
    # at most 1: the simulator never holds more than a capacity (bar one request larger than all of it)
    shares = {name: {k: (min(mean_held(held[k], a, b) / caps[k], 1.0) if caps[k] > 0 else 0.0) for k in caps}
              for name, (a, b) in windows.items()}
    ok = requests[requests["status"].astype(str) == "ok"] if len(requests) else requests
    wait = {"dram_buffer": 0.0, "pe_hbm": 0.0}
    if len(ok):
        ttft = float((pd.to_numeric(ok["t_first_token"]) - pd.to_numeric(ok["t_scheduled"])).mean())
        if ttft > 0:
            wait = {k: float(held["waits"][k].mean() / ttft) for k in wait}
    return {"shares": shares, "waits": wait}
