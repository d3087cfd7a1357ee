"""Occupancy of the capacity resources (`pe_hbm`, `de_hbm`, `dram_buffer`), rebuilt from the requests table.

The simulator keeps no record of what its buffers hold, so each request's holdings are rebuilt from its row:
the times follow from `t_sent` and the TTFT breakdown (TTFT = queue_s + alloc_s + read_s + prefill_s, then
kv_transfer_s to the decode engine), the sizes from its tokens and the model's KV bytes per token:

    read start  rs = t_sent + queue_s + alloc_s       read done  rd = rs + read_s
    first token tf = rd + prefill_s                   decoding   td = tf + kv_transfer_s

- `dram_buffer` (every node's staging buffer): the cached KV read on the PE side, from rs to rd
  (whole-request prefill: H2D follows the read) or to tf (layer-wise: released after the last chunk); the
  whole prompt's KV in the DE node's buffer, from tf (whole-request: sent after compute) or rd (layer-wise:
  streamed during compute) to td; a DE-side read holds the whole prompt's KV from rs to td.
- `pe_hbm` (whole-request prefill only: layer-wise holds one layer's KV, the oracle none): the prompt's
  KV from rd to td.
- `de_hbm`: the KV promised on the decode engine (prompt and output tokens) from rs to `t_done`.

What it approximates: the simulator counts an `alloc_s` wait either before the read (a full staging
buffer) or after it (full PE HBM); the table has only the sum, so the read is placed after all of it (rs
at most `alloc_s` late), and a request's wait is put on whichever of `dram_buffer` and `pe_hbm` was fuller,
cluster-wide, when it started to wait. The DE HBM is promised at dispatch, which lies inside `queue_s`;
rs is used. Waits on decode HBM happen in the scheduler and are inside `queue_s`: not separable here.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec
from engines.policy import system_policy


def capacity_bytes(scenario: Mapping) -> tuple[dict[str, float], int]:
    """({resource: bytes the whole cluster holds}, KV bytes per token) from the resolved profiles."""
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
             "dram_buffer": buffer * (p + d)}, model.kv_bytes_per_token)


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(df[name], errors="coerce").fillna(0).to_numpy(float) if name in df else np.zeros(len(df))


def holdings(requests: pd.DataFrame, system: str, kv_bytes: float) -> dict[str, tuple]:
    """{resource: (start, end, bytes)} arrays of what each request holds (see the module's docstring)."""
    ok = requests[requests["status"].astype(str) == "ok"] if len(requests) else requests
    policy = system_policy(system)
    s = pd.to_numeric(ok["t_sent"]).to_numpy(float) if len(ok) else np.zeros(0)
    rs = s + _col(ok, "queue_s") + _col(ok, "alloc_s")
    rd = rs + _col(ok, "read_s")
    tf = rd + _col(ok, "prefill_s")
    td = tf + _col(ok, "kv_transfer_s")
    done = pd.to_numeric(ok["t_done"]).to_numpy(float) if len(ok) else np.zeros(0)
    prompt = _col(ok, "prompt_tokens") * kv_bytes
    hit = _col(ok, "cached_tokens") * kv_bytes
    side = ok["read_side"].astype(str).to_numpy() if "read_side" in ok else np.full(len(ok), "pe")
    whole = not (policy.layerwise or policy.free_io)
    out = {"de_hbm": (rs, done, prompt + _col(ok, "output_tokens") * kv_bytes)}
    if policy.free_io:
        empty = (np.zeros(0),) * 3
        return {**out, "pe_hbm": empty, "dram_buffer": empty}
    out["pe_hbm"] = (rd, td, prompt) if whole else (np.zeros(0),) * 3
    de = side == "de"
    pe_read = (rs[~de], (rd if whole else tf)[~de], hit[~de])
    de_buf = ((tf if whole else rd)[~de], td[~de], prompt[~de])
    de_read = (rs[de], td[de], prompt[de])
    out["dram_buffer"] = tuple(np.concatenate(parts) for parts in zip(pe_read, de_buf, de_read))
    return out


def mean_held(held: tuple, a: float, b: float) -> float:
    """Time-mean of the bytes held in [a, b)."""
    start, end, nbytes = held
    if b <= a or not len(start):
        return 0.0
    overlap = np.clip(np.minimum(end, b) - np.maximum(start, a), 0, None)
    return float((nbytes * overlap).sum() / (b - a))


def held_at(held: tuple, t: np.ndarray) -> np.ndarray:
    """Bytes held at each time in t (a step function over the holdings' starts and ends)."""
    start, end, nbytes = held
    if not len(start):
        return np.zeros(len(t))
    times = np.r_[start, end]
    delta = np.r_[nbytes, -nbytes]
    order = np.argsort(times, kind="stable")
    level = np.cumsum(delta[order])
    i = np.searchsorted(times[order], t, side="right") - 1
    return np.where(i >= 0, level[np.clip(i, 0, None)], 0.0)


def occupancy(scenario: Mapping, requests: pd.DataFrame, system: str,
              windows: Mapping[str, tuple[float, float]]) -> dict:
    """{window: {resource: occupancy share}} and the share of the mean TTFT requests waited on each."""
    caps, kv_bytes = capacity_bytes(scenario)
    held = holdings(requests, system, kv_bytes)
    shares = {name: {k: (mean_held(held[k], a, b) / caps[k] if caps[k] > 0 else 0.0) for k in caps}
              for name, (a, b) in windows.items()}
    ok = requests[requests["status"].astype(str) == "ok"] if len(requests) else requests
    wait = {"dram_buffer": 0.0, "pe_hbm": 0.0}
    if len(ok):
        alloc = _col(ok, "alloc_s")
        ttft = float((pd.to_numeric(ok["t_first_token"]) - pd.to_numeric(ok["t_scheduled"])).mean())
        waited = alloc > 0
        if waited.any() and ttft > 0:
            t = (pd.to_numeric(ok["t_sent"]).to_numpy(float) + _col(ok, "queue_s"))[waited]
            fill = {k: held_at(held[k], t) / caps[k] if caps[k] > 0 and len(held[k][0]) else np.full(len(t), -1.0)
                    for k in wait}
            on_hbm = fill["pe_hbm"] > fill["dram_buffer"]
            wait["pe_hbm"] = float(alloc[waited][on_hbm].sum() / len(ok) / ttft)
            wait["dram_buffer"] = float(alloc[waited][~on_hbm].sum() / len(ok) / ttft)
    return {"shares": shares, "waits": wait}
