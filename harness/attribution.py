"""Bottleneck attribution: what limits each system, computed from the results tables alone.

Rate resources (busy share = bytes moved / what the link can move in that time, or compute seconds /
engine seconds): `snic_pe`, `snic_de` (storage NICs of prefill / decode nodes, at `snic_efficiency` of
line rate), `cnic` (compute NICs, at `cnic_efficiency`), `dram` (node DRAM bandwidth, both directions
together), `pe_compute` (step seconds of prefill engines over engine seconds), `de_compute` (share of
sampled decode steps spent beyond the smallest step seen, the weights-and-overheads floor a decode engine
pays even for one sequence: a memory-bound engine that steps for a few sequences has room to spare). A link's share in a
window is its busier direction's bytes over its capacity; a class's share is the mean over its nodes.

Capacity resources (`pe_hbm`, `de_hbm`, `dram_buffer`): occupancy is the time-mean of the bytes held over
the whole cluster's capacity, rebuilt from the requests table alone (see `holdings`), and the time requests
waited on each is their `alloc_s` (held back by a full buffer), as a share of the mean TTFT. `queue_s`
(scheduler and read queue) is reported too, as a share of the mean TTFT.

Busy phase: from the first request until the running agents fall below half of their peak, so the
drained tail of an offline run does not dilute the shares. Everything else is the whole run.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from engines.contract import SYSTEMS as LADDER
from engines.costmodel import SimConstants, hardware_spec

RATE_RESOURCES = ("snic_pe", "snic_de", "cnic", "dram", "pe_compute", "de_compute")
CAPACITY_RESOURCES = ("pe_hbm", "de_hbm", "dram_buffer")
WAITS = {"queue_s": "the scheduler and read queues", "alloc_s": "staging buffer / HBM space"}
MOVED = 0.05  # a ladder line names the resource that moved most when it moved at least this much
WAIT_SHARE = 0.10
LIGHT = 0.5  # below this busy share for the busiest rate resource, the verdict says the load is light  # a wait named in the verdict when it is at least this share of the mean TTFT
WHAT = {"snic_pe": "the prefill-side storage NICs (snic_pe)", "snic_de": "the decode-side storage NICs (snic_de)",
        "cnic": "the compute NICs (cnic)", "dram": "node DRAM bandwidth (dram)",
        "pe_compute": "prefill compute (pe_compute)", "de_compute": "decode compute (de_compute)",
        "pe_hbm": "prefill HBM for KV (pe_hbm)", "de_hbm": "decode HBM for KV (de_hbm)",
        "dram_buffer": "the DRAM staging buffers (dram_buffer)"}


def capacities(scenario: Mapping) -> dict[str, float]:
    """Usable bytes/s of one link of each class, from the resolved hardware profile and sim constants (a
    live cluster: the rates its pacers ran at, `live.snic_gbps` / `live.cnic_gbps` where set)."""
    if scenario.get("backend") == "live":
        from harness.backend_live import _cost
        cost = _cost(dict(scenario))
        return {"snic": cost.snic_rate, "cnic": cost.cnic_rate, "dram": cost.hw.dram_bw_bytes_s}
    hw = hardware_spec(scenario["hardware"])
    const = SimConstants().with_overrides(scenario.get("sim"))
    return {"snic": hw.snic_bytes_s * const.snic_efficiency, "cnic": hw.cnic_bytes_s * const.cnic_efficiency,
            "dram": hw.dram_bw_bytes_s}


def profiles(scenario: Mapping) -> dict:
    """The resolved model and hardware profiles (for summary.json's meta)."""
    from engines.costmodel.profiles import load_profile
    return {kind: load_profile(kind, scenario[kind])[0] for kind in ("model", "hardware")}


def busy_phase(requests: pd.DataFrame, agents: pd.DataFrame) -> tuple[float, float]:
    """(start, end) s: the first request until the running agents fall below half their peak."""
    t0 = float(pd.to_numeric(requests["t_scheduled"]).min()) if len(requests) else 0.0
    if agents is None or not len(agents):
        end = float(pd.to_numeric(requests["t_done"]).max()) if len(requests) else t0
        return t0, end
    arr = pd.to_numeric(agents["t_arrival"]).to_numpy(float)
    done = pd.to_numeric(agents["t_done"]).to_numpy(float)
    done = np.where(np.isfinite(done), done, np.nanmax(np.r_[done[np.isfinite(done)], arr]))
    times = np.r_[arr, done]
    steps = np.r_[np.ones(len(arr)), -np.ones(len(done))]
    order = np.lexsort((steps, times))  # at equal times, departures first
    running = np.cumsum(steps[order])
    times = times[order]
    peak_i = int(np.argmax(running))
    peak = running[peak_i]
    below = np.nonzero(running[peak_i:] < peak / 2)[0]
    end = float(times[peak_i + below[0]]) if len(below) else float(times[-1])
    return t0, max(end, t0)


def live_links_as_simulated(links: pd.DataFrame, prefill_nodes: int) -> pd.DataFrame:
    """A live cluster's links rows with the simulator's node names (node i -> p i for the first
    `prefill_nodes`, else d i-P); the storage service's own rows (its side of each node's SNIC) left out."""
    if links is None or not len(links):
        return links
    node = links["node"].astype(str)
    keep = node.str.fullmatch(r"node\d+")
    index = node[keep].str[4:].astype(int)
    names = np.where(index < prefill_nodes, "p" + index.astype(str), "d" + (index - prefill_nodes).astype(str))
    return links[keep].assign(node=names)


def link_shares(links: pd.DataFrame, caps: Mapping[str, float], start: float, end: float) -> dict[str, float]:
    """Mean busy share per link class over windows overlapping [start, end)."""
    out = {k: 0.0 for k in ("snic_pe", "snic_de", "cnic", "dram")}
    if links is None or not len(links) or end <= start:
        return out
    # write-backs move without constraining any link (in the simulator and the live cluster's pacers
    # alike), so they cannot be what limits a run: counted, a DE's SNIC came out over 100 % busy
    df = links[(links["t_end"] > start) & (links["t_start"] < end) & (links["traffic"].astype(str) != "kv_write")]
    if not len(df):
        return out
    t_start, t_end = pd.to_numeric(links["t_start"]), pd.to_numeric(links["t_end"])
    n_windows = len(np.unique(t_start[(t_end > start) & (t_start < end)]))
    window = float((t_end - t_start).max())
    span = n_windows * window
    node = df["node"].astype(str)
    kind = df["link"].astype(str).str.replace(r"\d+$", "", regex=True)
    nodes = links["node"].astype(str).unique()
    n_pe = sum(1 for n in nodes if n.startswith("p"))
    n_de = len(nodes) - n_pe
    cnics = links.loc[links["link"].astype(str).str.startswith("cnic"), ["node", "link"]].drop_duplicates()
    # bytes per link and direction over the phase; a link's share is its busier direction (dram: both)
    per = df.assign(kind=kind, side=np.where(node.str.startswith("p"), "pe", "de"))
    per_dir = per.groupby(["kind", "side", "node", "link", "direction"], observed=True)["bytes"].sum()
    for (k, side), grp in per_dir.groupby(level=["kind", "side"]):
        if k == "dram":
            link_bytes = grp.groupby(level=["node", "link"]).sum()
        else:
            link_bytes = grp.groupby(level=["node", "link"]).max()
        if k == "snic":
            n_links = n_pe if side == "pe" else n_de
            out[f"snic_{side}"] = float(link_bytes.sum()) / (n_links * caps["snic"] * span)
        elif k == "cnic":
            out["cnic"] += float(link_bytes.sum()) / (max(len(cnics), 1) * caps["cnic"] * span)
        elif k == "dram":
            out["dram"] += float(link_bytes.sum()) / (len(nodes) * caps["dram"] * span)
    return out


def compute_shares(engines: pd.DataFrame, start: float, end: float) -> dict[str, float]:
    """Step seconds of prefill / decode engines over engine seconds in [start, end)."""
    out = {"pe_compute": 0.0, "de_compute": 0.0}
    if engines is None or not len(engines) or end <= start:
        return out
    t = pd.to_numeric(engines["t"])
    for role, key in (("prefill", "pe_compute"), ("decode", "de_compute")):
        mine = engines["role"].astype(str) == role
        n = engines.loc[mine, "engine"].nunique()
        if not n:
            continue
        rows = engines.loc[mine & (t >= start) & (t < end)]
        if role == "prefill":  # one row per forward step: its seconds
            busy = pd.to_numeric(rows["step_s"]).fillna(0).sum() / (n * (end - start))
        else:  # one row per engine and window (a step sampled): the step beyond the one-sequence floor
            step = pd.to_numeric(rows["step_s"]).fillna(0).to_numpy(float)
            held = (pd.to_numeric(rows["batch_requests"]).fillna(0).to_numpy() > 0) & (step > 0)
            if held.any():
                floor = step[held].min()
                busy = float(((step[held] - floor) / step[held]).sum() / len(rows))
            else:
                busy = 0.0
        out[key] = float(min(busy, 1.0))
    return out


def waits(requests: pd.DataFrame) -> dict[str, float]:
    """Mean wait per request in each breakdown column, as a share of the mean TTFT."""
    ok = requests[requests["status"].astype(str) == "ok"] if len(requests) else requests
    if not len(ok):
        return {k: 0.0 for k in WAITS}
    ttft = float((pd.to_numeric(ok["t_first_token"]) - pd.to_numeric(ok["t_scheduled"])).mean())
    return {k: (float(pd.to_numeric(ok[k]).fillna(0).mean()) / ttft if ttft > 0 and k in ok else 0.0) for k in WAITS}


def attribute(scenario: Mapping, requests: pd.DataFrame, agents: pd.DataFrame, links: pd.DataFrame,
              engines: pd.DataFrame, system: str | None = None) -> dict:
    """`utilisation`, `utilisation_whole_run` and `bottleneck` of one system's records."""
    backend = scenario.get("backend", "sim")
    if backend not in ("sim", "live"):
        return attribute_served(requests, agents, links, engines)
    if backend == "live":  # our own cluster: its links' rates and its engines' steps are known
        links = live_links_as_simulated(links, int(scenario["cluster"]["prefill_nodes"]))
    start, end = busy_phase(requests, agents)
    t_last = max([float(pd.to_numeric(d[c]).max()) for d, c in ((requests, "t_done"), (links, "t_end"))
                  if d is not None and len(d)] or [end])
    wait = waits(requests)
    windows = {"busy": (start, end), "whole": (start, max(t_last, end))}
    occ = {"shares": {w: {} for w in windows}, "waits": {}}
    sim = backend == "sim"
    if system and sim and requests is not None and len(requests):
        from harness.occupancy import occupancy
        occ = occupancy(scenario, requests, system, windows)

    def shares(window: str) -> dict:
        a, b = windows[window]
        s = {**link_shares(links, capacities(scenario), a, b),
             **compute_shares(engines, a, b), **occ["shares"][window]}
        return {k: round(min(s[k], 9.99), 4) for k in RATE_RESOURCES + CAPACITY_RESOURCES if k in s}
    busy, whole = shares("busy"), shares("whole")
    rated = [k for k in RATE_RESOURCES if k in busy]
    top = max(rated, key=lambda k: busy[k]) if rated else None
    verdict = (f"limited by {WHAT[top]}, {busy[top] * 100:.0f} % busy in the busy phase" if top
               else "no resource measured")
    if top and busy[top] < LIGHT:
        verdict += f" (a light load: no rate resource is {LIGHT * 100:.0f} % busy)"
    waited = [f"{WHAT[k]}, {busy[k] * 100:.0f} % full in the busy phase ({v * 100:.0f} % of TTFT)"
              for k, v in occ["waits"].items() if v >= WAIT_SHARE]
    if not waited and wait["alloc_s"] >= WAIT_SHARE:
        waited = [f"{WAITS['alloc_s']} (alloc_s, {wait['alloc_s'] * 100:.0f} % of TTFT)"]
    if wait["queue_s"] >= WAIT_SHARE:
        waited.insert(0, f"{WAITS['queue_s']} (queue_s, {wait['queue_s'] * 100:.0f} % of TTFT)")
    if waited:
        verdict += "; requests waited on " + " and ".join(waited)
    return {"utilisation": {**busy, **{f"wait_{k}": round(v, 4) for k, v in wait.items()},
                            **{f"wait_{k}": round(v, 4) for k, v in occ["waits"].items()}},
            "utilisation_whole_run": whole,
            "busy_phase_s": [round(start, 3), round(end, 3)],
            "bottleneck": {"resource": top, "busy_share": busy[top] if top else None, "verdict": verdict + "."}}


def attribute_served(requests: pd.DataFrame, agents: pd.DataFrame, links: pd.DataFrame,
                     engines: pd.DataFrame) -> dict:
    """A real server (backend http): only what its scraped metrics say. Attributable: whether the server
    queued requests (vLLM/SGLang waiting gauges: `server_queue` is the share of scrapes in the phase with
    a request waiting; `server_running` the mean running requests) and the bytes its byte counters moved
    (`links`, GB/s, no share: no line rate is known). Not attributable: which resource inside the server
    (storage NIC, compute, HBM) limits it, and any TTFT breakdown."""
    if requests is None or not len(requests):
        return {}
    start, end = busy_phase(requests, agents)
    t_last = max(end, float(pd.to_numeric(requests["t_done"]).max()))

    def shares(a: float, b: float) -> dict:
        out = {}
        srv = engines[engines["role"].astype(str) == "server"] if engines is not None and len(engines) else None
        if srv is not None and len(srv):
            t = pd.to_numeric(srv["t"])
            rows = srv[(t >= a) & (t <= b)]
            if len(rows):
                per_scrape = rows.groupby("t")[["queued_tokens", "batch_requests"]].sum()
                out["server_queue"] = round(float((per_scrape["queued_tokens"] > 0).mean()), 4)
                out["server_running"] = round(float(per_scrape["batch_requests"].mean()), 2)
        return out
    busy, whole = shares(start, end), shares(start, t_last)
    peak = None
    if links is not None and len(links):
        w = pd.to_numeric(links["t_end"]) - pd.to_numeric(links["t_start"])
        rate = (pd.to_numeric(links["bytes"]) / w).groupby([links["node"].astype(str), links["link"].astype(str),
                                                            links["t_start"]]).sum()
        if len(rate):
            (node, dev, _), peak = rate.idxmax(), float(rate.max())
    if "server_queue" in busy:
        top, share = "server_queue", busy["server_queue"]
        verdict = (f"the server queued requests in {share * 100:.0f} % of its scrapes in the busy phase "
                   f"({busy['server_running']:g} running on average)"
                   + (": it is saturated" if share >= 0.5 else ": it mostly kept up"))
    else:
        top, share = None, None
        verdict = "no server queue gauges scraped (set `prometheus:` endpoints to attribute)"
    if peak is not None:
        verdict += f"; busiest scraped link {node}/{dev} at {peak / 1e9:.2f} GB/s"
    verdict += "; which resource inside the server limits it is not attributable from scraped metrics"
    return {"utilisation": busy, "utilisation_whole_run": whole, "busy_phase_s": [round(start, 3), round(end, 3)],
            "bottleneck": {"resource": top, "busy_share": share, "verdict": verdict + "."}}


def attribute_results(results: Mapping) -> dict[str, dict]:
    """Attribution per system of a loaded results directory (harness.results.load_results); of a repeated
    run (--repeats), its first repeat (the repeats share one clock)."""
    scenario = results["summary"]["meta"]["scenario"]
    out = {}
    for system in results["summary"]["systems"]:
        pick = {}
        for k in ("requests", "agents", "links", "engines"):
            d = results.get(k)
            if d is not None and len(d):
                d = d[d["system"].astype(str) == system]
                if "repeat" in d and len(d):
                    d = d[d["repeat"] == d["repeat"].min()]
            pick[k] = d
        out[system] = attribute(scenario, pick.get("requests"), pick.get("agents"), pick.get("links"),
                                pick.get("engines"), system)
    return out


def bottleneck_of(summary: Mapping) -> dict | None:
    """The summary's bottleneck; for one pooled over repeats that disagree (metrics.pool_repeats leaves a
    string that differs as None), the rate resource busiest on the repeats' mean utilisation."""
    b = summary.get("bottleneck")
    if not b or (b.get("resource") and b.get("verdict")) or not summary.get("repeats"):
        return b
    u = summary.get("utilisation") or {}
    rated = [k for k in RATE_RESOURCES if u.get(k) is not None]
    if not rated:
        return b
    top = max(rated, key=lambda k: u[k])
    tops = sorted({(r.get("bottleneck") or {}).get("resource") or "-" for r in summary["repeats"]})
    return {"resource": top, "busy_share": u[top],
            "verdict": f"limited by {WHAT[top]}, {u[top] * 100:.0f} % busy in the busy phase (mean of "
                       f"{len(summary['repeats'])} repeats, whose own bottlenecks were {', '.join(tops)})."}


def limited_line(system: str, summary: Mapping) -> str | None:
    b = bottleneck_of(summary)
    if not b:
        return None
    if b.get("resource") == "server_queue":
        return f"{system}: server queued requests in {b['busy_share'] * 100:.0f} % of scrapes (busy phase)"
    if not b.get("resource") or b.get("busy_share") is None:
        return None  # nothing attributable (a server without scraped gauges): summary.json says why
    return f"{system}: limited by {b['resource']}, {b['busy_share'] * 100:.0f} % busy"


def ladder_lines(summaries: Mapping[str, Mapping]) -> list[str]:
    """What each system of the ablation ladder buys over the one before it in this run."""
    present = [s for s in LADDER if s in summaries and summaries[s].get("utilisation")]
    lines = []
    for prev, cur in zip(present, present[1:]):
        a, b = summaries[prev], summaries[cur]
        ja, jb = a.get("makespan_jct_s"), b.get("makespan_jct_s")
        gain = f"JCT {ja:.0f} s -> {jb:.0f} s ({ja / jb:.2f}x)" if ja and jb else "JCT n/a"
        ua, ub = a["utilisation"], b["utilisation"]
        both = [k for k in RATE_RESOURCES + CAPACITY_RESOURCES if k in ua and k in ub]
        moved = max(both, key=lambda k: abs(ub[k] - ua[k])) if both else None
        if moved and abs(ub[moved] - ua[moved]) >= MOVED:
            what = "busy" if moved in RATE_RESOURCES else "full"
            line = f"{cur} over {prev}: {gain}; {moved} {ua[moved] * 100:.0f} % -> {ub[moved] * 100:.0f} % {what}"
        else:
            line = f"{cur} over {prev}: {gain}; no resource moved by {MOVED * 100:.0f} points or more"
        ba, bb = a.get("attention_balance"), b.get("attention_balance")
        if ba and bb and max(ba, bb) / min(ba, bb) > 1.2:
            line += f"; prefill attention max/avg {ba:.2f} -> {bb:.2f}"
        lines.append(line)
    return lines
