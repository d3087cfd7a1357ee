"""Statistics of a run, computed from the records (DESIGN.md "Contracts"), the same for every backend.

Latency distributions go through HdrHistogram: values in integer microseconds, 1 us .. 7 days,
3 significant digits, so every percentile is within 0.1 % of the exact order statistic (HDR reports
the top of the value's bucket) and histograms from several processes merge exactly (`merge_hdr`).
Values that do not fit (negative, or beyond the range) are counted in `out_of_range`, never dropped
silently. Only requests with status `ok` enter latency statistics; the others are counted by status.

TTFT counts from `t_scheduled`, the intended send time (no coordinated omission); `ttft_from_sent_s`
and `dispatch_lag_s` (t_sent - t_scheduled) show how much of it is the client's own backlog.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram

from engines.contract import BREAKDOWN_COLUMNS, STATUSES

LOWEST_US = 1
HIGHEST_US = 7 * 24 * 3600 * 1_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
TTFT_PARTS = ("queue_s", "alloc_s", "read_s", "prefill_s")  # kv_transfer_s comes after the first token
REQUEST_METRICS = ("ttft_s", "ttft_from_sent_s", "ttst_s", "tpot_s", "e2e_s", "dispatch_lag_s", "pacer_lag_s",
                   "itl_s")
SLO_METRICS = ("ttft_s", "tpot_s", "e2e_s")
EARLY_FRACTION = 0.05  # attention_balance_early: the first 5 % of the run
DISPATCH_LAG_WARN_S = 0.005  # p99 of the harness's own lag above this: the load generator fell behind
ARRIVAL_RATE_WARN = 0.01  # agents started this far (relative) off their schedule's rate
PROMPT_TOKENS_WARN = 0.05  # the server's prompt token count this far (median ratio) from the trace's


# ----- HdrHistogram helpers ------------------------------------------------------------------------
def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _bucket_floor_us(hist: HdrHistogram, values_us: np.ndarray) -> np.ndarray:
    """Each value's lowest equivalent value in `hist` (vectorised `get_lowest_equivalent_value`).

    Recording these instead of the raw values fills exactly the same counters (and min/max, which HDR
    reports as bucket bounds), so a million values cost one `record_value` call per distinct bucket.
    """
    masked = values_us | np.int64(hist.sub_bucket_mask)
    bit_length = np.frexp(masked.astype(np.float64))[1].astype(np.int64)  # exact below 2**53
    bucket_index = bit_length - hist.unit_magnitude - (hist.sub_bucket_half_count_magnitude + 1)
    shift = bucket_index + hist.unit_magnitude
    return (values_us >> shift) << shift


def _recorded_buckets(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lowest value, width, count) of every non-empty bucket, in value order: hdrh's percentile and
    mean loops over 31,744 counters in pure Python (~50 ms each), done with numpy."""
    counts = np.ctypeslib.as_array(hist.counts)
    index = np.flatnonzero(counts)
    bucket = (index >> hist.sub_bucket_half_count_magnitude) - 1
    sub_bucket = (index & (hist.sub_bucket_half_count - 1)) + hist.sub_bucket_half_count
    first = bucket < 0
    sub_bucket[first] -= hist.sub_bucket_half_count
    bucket[first] = 0
    shift = bucket + hist.unit_magnitude
    return (sub_bucket << shift).astype(np.int64), (np.int64(1) << shift), counts[index].astype(np.int64)


def record_seconds(hist: HdrHistogram, values_s) -> int:
    """Record durations in seconds as microseconds; NaN is skipped; returns how many did not fit."""
    v = np.asarray(values_s, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    fits = np.isfinite(v) & (v >= 0) & (v * 1e6 < 2.0 ** 62)
    out_of_range = int((~fits).sum())
    us = np.rint(v[fits] * 1e6).astype(np.int64)
    buckets, counts = np.unique(_bucket_floor_us(hist, us), return_counts=True)
    for value, count in zip(buckets.tolist(), counts.tolist()):
        if not hist.record_value(value, count):
            out_of_range += count
    return out_of_range


def hdr_from_values(values_s) -> tuple[HdrHistogram, int]:
    """A histogram of durations in seconds, and the number of values out of its range."""
    hist = new_histogram()
    return hist, record_seconds(hist, values_s)


def encode_hdr(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def merge_hdr(encoded: Iterable[str | bytes | None]) -> HdrHistogram:
    """One histogram from many `encode()` strings (e.g. one per process or per system)."""
    merged = new_histogram()
    for blob in encoded:
        if blob:
            merged.decode_and_add(blob.encode("ascii") if isinstance(blob, str) else blob)
    return merged


def stats_from_hdr(hist: HdrHistogram, out_of_range: int = 0) -> dict:
    """count, mean, p50, p90, p99, p99.9, max in seconds (None when empty), plus the encoded histogram."""
    count = int(hist.get_total_count())
    stats = {"count": count, "out_of_range": int(out_of_range)}
    if count == 0:
        return {**stats, "mean": None, **{_pct_key(p): None for p in PERCENTILES}, "max": None, "hdr": None}
    lowest, size, counts = _recorded_buckets(hist)
    stats["mean"] = float((counts * (lowest + (size >> 1)).astype(np.float64)).sum() / counts.sum()) / 1e6
    cumulative = np.cumsum(counts)
    for p in PERCENTILES:
        target = max(1, int(p * count / 100 + 0.5))  # as HdrHistogram.get_target_count_at_percentile
        i = int(np.searchsorted(cumulative, target))
        stats[_pct_key(p)] = int(lowest[i] + size[i] - 1) / 1e6  # the bucket's highest equivalent value
    stats["max"] = hist.get_max_value() / 1e6
    stats["hdr"] = encode_hdr(hist)
    return stats


def histogram_buckets(encoded: str | bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """(middle of each recorded bucket in seconds, its count) of an encoded histogram, in value order:
    the requests of a summary, to resample without the raw rows (dualpath gate)."""
    if not encoded:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    lowest, size, counts = _recorded_buckets(decode_hdr(encoded))
    return (lowest + (size >> 1)).astype(np.float64) / 1e6, counts


def latency_stats(values_s) -> dict:
    hist, out_of_range = hdr_from_values(values_s)
    return stats_from_hdr(hist, out_of_range)


def _pct_key(p: float) -> str:
    return f"p{p:g}"


def decode_hdr(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii") if isinstance(encoded, str) else encoded)


# ----- per-request metrics -------------------------------------------------------------------------
def _float(df: pd.DataFrame | None, column: str) -> np.ndarray:
    if df is None or column not in df.columns:
        return np.full(0 if df is None else len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def ok_requests(requests: pd.DataFrame | None) -> pd.DataFrame:
    if requests is None or len(requests) == 0:
        return pd.DataFrame(columns=["status"])
    return requests[requests["status"].astype(str).to_numpy() == "ok"]


def request_latencies(requests: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Per-request latency values (seconds) of the ok requests, NaN where not reached."""
    ok = ok_requests(requests)
    t_sched, t_sent = _float(ok, "t_scheduled"), _float(ok, "t_sent")
    t_first, t_second, t_done = _float(ok, "t_first_token"), _float(ok, "t_second_token"), _float(ok, "t_done")
    out_tokens = _float(ok, "output_tokens")
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out_tokens > 1, (t_done - t_first) / (out_tokens - 1), np.nan)
    values = {
        "ttft_s": t_first - t_sched,
        "ttft_from_sent_s": t_first - t_sent,
        "ttst_s": t_second - t_sched,
        "tpot_s": tpot,
        "e2e_s": t_done - t_sched,
        "dispatch_lag_s": t_sent - t_sched,
    }
    if "t_dispatched" in ok.columns:  # the driver's own wake-up lag, without any concurrency-cap wait
        values["pacer_lag_s"] = _float(ok, "t_dispatched") - t_sched
    if "itl_s" in ok.columns:
        gaps = [np.asarray(g, dtype=np.float64).ravel() for g in ok["itl_s"] if g is not None
                and not (np.isscalar(g) and pd.isna(g))]
        values["itl_s"] = np.concatenate(gaps) if gaps else np.zeros(0)
    return values


def interval_histograms(times_s, values_s, window_s: float) -> list[tuple[float, HdrHistogram, int]]:
    """Split values by the telemetry window their time falls in: [(window start s, hist, out of range)]."""
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values_s, dtype=np.float64)
    keep = ~(np.isnan(t) | np.isnan(v))
    t, v = t[keep], v[keep]
    window = np.floor(t / window_s + 1e-9).astype(np.int64)
    out = []
    for w in np.unique(window).tolist():
        hist, bad = hdr_from_values(v[window == w])
        out.append((w * window_s, hist, bad))
    return out


# ----- balance ---------------------------------------------------------------------------------------
def snic_balance_per_window(links: pd.DataFrame | None, window_s: float, *,
                            with_bytes: bool = False):
    """Per telemetry window, max/avg over nodes of storage-NIC read bytes (windows with reads only).

    The nodes are every node with an `snic` row; a node with no read in a window counts as 0 bytes.
    With `with_bytes`, also each window's total read bytes (to weight the windows: a run's nearly idle
    tail, where a handful of reads make any ratio, then counts for little).
    """
    if links is None or len(links) == 0:
        return (np.zeros(0), np.zeros(0)) if with_bytes else np.zeros(0)
    snic = links[links["link"].astype(str).to_numpy() == "snic"]
    nodes = pd.unique(snic["node"])
    reads = snic[(snic["direction"].astype(str).to_numpy() == "rx")
                 & (snic["traffic"].astype(str).to_numpy() == "kv_read")]
    if len(reads) == 0:
        return (np.zeros(0), np.zeros(0)) if with_bytes else np.zeros(0)
    window = np.floor(_float(reads, "t_start") / window_s + 1e-6).astype(np.int64)
    per_node = (pd.DataFrame({"window": window, "node": reads["node"].to_numpy(), "bytes": _float(reads, "bytes")})
                .groupby(["window", "node"])["bytes"].sum().unstack(fill_value=0.0)
                .reindex(columns=nodes, fill_value=0.0))
    avg, peak = per_node.mean(axis=1).to_numpy(), per_node.max(axis=1).to_numpy()
    ratio = peak[avg > 0] / avg[avg > 0]
    if with_bytes:
        return ratio, per_node.sum(axis=1).to_numpy()[avg > 0]
    return ratio


def attention_balance_per_step(engines: pd.DataFrame | None) -> pd.DataFrame:
    """Per prefill step (engines stepping at the same `t`, per `group` when the backend gives one):
    max/avg of attention_s across the engines, idle ones (attention 0) included when the backend records
    them, as the simulator does; steps with fewer than 2 engines or no attention skipped."""
    if engines is None or len(engines) == 0:
        return pd.DataFrame({"t": [], "ratio": []})
    pre = engines[engines["role"].astype(str).to_numpy() == "prefill"]
    keys = ["t", "group"] if "group" in pre.columns else ["t"]
    frame = pd.DataFrame({k: pre[k].to_numpy() for k in keys})
    frame["attention_s"] = _float(pre, "attention_s")
    agg = frame.groupby(keys, dropna=False)["attention_s"].agg(["max", "mean", "count"]).reset_index()
    agg = agg[(agg["count"] >= 2) & (agg["mean"] > 0)]
    return pd.DataFrame({"t": agg["t"].to_numpy(dtype=np.float64),
                         "ratio": (agg["max"] / agg["mean"]).to_numpy(dtype=np.float64)})


# ----- the system summary --------------------------------------------------------------------------
def _mean_or_none(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


def _per_s(amount: float, duration_s: float | None) -> float | None:
    return float(amount) / duration_s if duration_s else None


def exact_percentile(values, p: float) -> float:
    """The order statistic HdrHistogram reports for percentile p (rank round(p/100 n), at least 1),
    taken from the raw values: a threshold decision must not flip on a bucket's upper bound."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[max(1, int(p * len(v) / 100 + 0.5)) - 1])


def slo_statistic(values, percentile: float | None) -> float | None:
    """The statistic an SLO is judged at: the mean, or the exact order statistic at `percentile`. NaN
    values (not reached) are left out; inf (a failed request) stays, so failures count against the SLO."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return None
    return exact_percentile(v, float(percentile)) if percentile is not None else float(v.mean())


def _slo_summary(slo: Mapping, latencies: dict, ok: pd.DataFrame, failed: int, duration_s) -> dict | None:
    """Per-request attainment and goodput (DistServe), and whether the run meets the SLO judged at the
    mean (or at `percentile`) of the raw values. A request that failed (error, timeout) misses every
    target: it counts in the attainment's denominator and as an infinite latency in the judged value."""
    targets = {k: float(slo[k]) for k in SLO_METRICS if slo.get(k) is not None}
    if not targets:
        return None
    percentile = slo.get("percentile")
    met_all = np.ones(len(ok), dtype=bool)
    out_tokens = _float(ok, "output_tokens")
    judged, met = {}, True
    for name, target in targets.items():
        value = latencies[name]
        with np.errstate(invalid="ignore"):
            meets = value <= target
        if name == "tpot_s":
            meets |= out_tokens <= 1
        met_all &= meets
        stat = slo_statistic(np.concatenate([value, np.full(failed, np.inf)]), percentile)
        judged[name] = stat
        met = met and (stat is None or stat <= target)
    good = int(met_all.sum())
    judged_requests = len(ok) + failed
    return {
        "targets": targets,
        "judged_at": "mean" if percentile is None else _pct_key(float(percentile)),
        "values": judged,
        "met": bool(met and len(ok) > 0),
        "attainment": good / judged_requests if judged_requests else None,
        "good_requests": good,
        "failed_requests": failed,
        "goodput_rps": _per_s(good, duration_s),
    }


def arrival_rates(requests: pd.DataFrame | None, arrival: Mapping | None = None) -> dict:
    """Agents started per second: requested (the scenario's `rate_aps`), as scheduled (the first rounds'
    `t_scheduled`, a sample of the arrival process) and as achieved (their `t_sent`): achieved over
    scheduled is how faithfully the load generator kept its schedule."""
    arrival = arrival or {}
    out = {"mode": arrival.get("mode", "offline"), "requested_rate_aps": arrival.get("rate_aps")}
    if requests is None or "round" not in requests.columns or len(requests) == 0:
        return out
    first = requests[requests["round"].to_numpy() == 0]

    def span(col: str) -> float:
        t = _float(first, col)
        t = t[np.isfinite(t)]
        return float(t.max() - t.min()) if len(t) >= 2 else 0.0

    n = len(first)
    out["agents_started"] = n
    scheduled, achieved = span("t_scheduled"), span("t_sent")
    out["scheduled_rate_aps"] = (n - 1) / scheduled if scheduled > 0 else None
    out["achieved_rate_aps"] = (n - 1) / achieved if achieved > 0 else None
    if scheduled > 0 and achieved > 0:
        out["achieved_over_scheduled"] = scheduled / achieved
        out["start_span_diff_s"] = achieved - scheduled  # how much longer starting them all took
    return out


def summarize_system(requests: pd.DataFrame | None, agents: pd.DataFrame | None, links: pd.DataFrame | None,
                     engines: pd.DataFrame | None, slo: Mapping | None, window_s: float,
                     arrival: Mapping | None = None) -> dict:
    """The summary.json entry of one system (see DESIGN.md "Summary"), from its records."""
    requests = requests if requests is not None else pd.DataFrame(columns=["status"])
    status = requests["status"].astype(str).to_numpy() if len(requests) else np.zeros(0, dtype=str)
    by_status = {s: int((status == s).sum()) for s in STATUSES}
    by_status.update({s: int((status == s).sum()) for s in np.unique(status) if s not in by_status})
    ok = ok_requests(requests)
    agents_ok = agents[agents["status"].astype(str).to_numpy() == "ok"] if agents is not None and len(agents) else None

    t_arrival, t_agent_done = _float(agents, "t_arrival"), _float(agents, "t_done")
    makespan = (float(np.nanmax(t_agent_done) - np.nanmin(t_arrival))
                if np.isfinite(t_agent_done).any() and np.isfinite(t_arrival).any() else None)
    starts = np.concatenate([_float(requests, "t_scheduled"), t_arrival])
    ends = np.concatenate([_float(requests, "t_done"), t_agent_done])
    t_start = float(np.nanmin(starts)) if np.isfinite(starts).any() else None
    duration = (float(np.nanmax(ends)) - t_start) if t_start is not None and np.isfinite(ends).any() else None
    duration = duration if duration and duration > 0 else None

    latencies = request_latencies(requests)
    latencies["jct_s"] = _float(agents_ok, "jct_s")
    latency = {name: latency_stats(values) for name, values in latencies.items()}

    prompt = _float(ok, "prompt_tokens")
    cached = _float(ok, "cached_tokens")
    asked, got = _float(ok, "max_tokens"), _float(ok, "output_tokens")
    short = (asked > got) & np.isfinite(asked)
    server_prompt = _float(ok, "server_prompt_tokens")
    counted = np.isfinite(server_prompt) & (prompt > 0)
    known = ~np.isnan(cached)
    mean_ttft = _mean_or_none(latencies["ttft_s"])
    breakdown_mean = {c: _mean_or_none(_float(ok, c)) for c in BREAKDOWN_COLUMNS}
    breakdown_mean = {c: m for c, m in breakdown_mean.items() if m is not None}

    snic, snic_bytes = snic_balance_per_window(links, window_s, with_bytes=True)
    steps = attention_balance_per_step(engines)
    if len(steps):
        early_start = t_start if t_start is not None else float(steps["t"].min())
        early_span = duration if duration is not None else float(steps["t"].max() - steps["t"].min())
        early = steps["ratio"][steps["t"] <= early_start + EARLY_FRACTION * early_span]
    else:
        early = steps["ratio"]

    summary = {
        "counts": {"requests": {"total": int(len(requests)), **by_status},
                   "agents": 0 if agents is None else int(len(agents)),
                   "agents_done": 0 if agents_ok is None else int(len(agents_ok)),
                   "rounds": int(np.nansum(_float(agents, "rounds"))) if agents is not None and len(agents)
                   else int(len(requests)),
                   "short_output": int(short.sum())},  # ok requests that generated fewer tokens than asked
        "short_output_median": ({"output_tokens": float(np.median(got[short])),
                                 "max_tokens": float(np.median(asked[short]))} if short.any() else None),
        # the server's usage.prompt_tokens over the trace's prompt_tokens, median (a tokenizer or template check)
        "server_prompt_tokens_ratio": (float(np.median(server_prompt[counted] / prompt[counted]))
                                       if counted.any() else None),
        "makespan_jct_s": makespan,
        "duration_s": duration,
        "throughput": {
            "requests_per_s": _per_s(len(ok), duration),
            "prompt_tokens_per_s": _per_s(np.nansum(prompt), duration),
            "output_tokens_per_s": _per_s(np.nansum(_float(ok, "output_tokens")), duration),
            "agents_per_s": _per_s(0 if agents_ok is None else len(agents_ok), duration),
        },
        "latency": latency,
        "arrival": arrival_rates(requests, arrival),
        "hit_rate_expected": _ratio(np.nansum(_float(ok, "expected_cached_tokens")), np.nansum(prompt)),
        "hit_rate_achieved": _ratio(cached[known].sum(), prompt[known].sum()) if known.any() else None,
        "slo": _slo_summary(slo or {}, latencies, ok, by_status["error"] + by_status["timeout"], duration),
        "snic_balance": float(np.average(snic, weights=snic_bytes)) if len(snic) else None,  # byte-weighted
        "snic_balance_p90": float(np.percentile(snic, 90)) if len(snic) else None,
        "snic_windows": int(len(snic)),
        "attention_balance": float(steps["ratio"].mean()) if len(steps) else None,
        "attention_balance_early": float(early.mean()) if len(early) else None,
        "ttft_breakdown_mean_s": breakdown_mean,
        "ttft_breakdown_share": ({c: m / mean_ttft for c, m in breakdown_mean.items() if c in TTFT_PARTS}
                                 if mean_ttft else {}),
        "window_s": float(window_s),
    }
    summary["warnings"] = _warnings(summary)
    return summary


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _warnings(summary: dict) -> list[str]:
    out = []
    for name, stats in summary["latency"].items():
        if stats["out_of_range"]:
            out.append(f"{name}: {stats['out_of_range']} value(s) outside 0 .. 7 days were not recorded")
    own = summary["latency"].get("pacer_lag_s") or summary["latency"]["dispatch_lag_s"]
    lag = own["p99"] if own else None
    if lag is not None and lag > DISPATCH_LAG_WARN_S:
        out.append(f"dispatch lag p99 {lag * 1e3:.1f} ms: the load generator fell behind its schedule "
                   "(TTFT counts from the intended send time, so it includes this backlog)")
    ratio = summary["arrival"].get("achieved_over_scheduled")
    if (ratio is not None and abs(ratio - 1) > ARRIVAL_RATE_WARN  # a few ms off over a short span is lag, not rate
            and abs(summary["arrival"]["start_span_diff_s"]) > DISPATCH_LAG_WARN_S):
        a = summary["arrival"]
        out.append(f"agents started at {a['achieved_rate_aps']:.4g}/s against {a['scheduled_rate_aps']:.4g}/s "
                   f"scheduled ({100 * (ratio - 1):+.1f} %): the load generator or max_concurrency held them back")
    short = summary["counts"].get("short_output")
    if short:
        m = summary["short_output_median"]
        out.append(f"{short} request(s) ended before max_tokens (median {m['output_tokens']:.0f} of "
                   f"{m['max_tokens']:.0f} tokens): the server stopped early (EOS not ignored, or a cap on output "
                   "length), so TPOT and the next rounds' prompts are not the trace's")
    ratio = summary.get("server_prompt_tokens_ratio")
    if ratio is not None and abs(ratio - 1) > PROMPT_TOKENS_WARN:
        out.append(f"the server counted {ratio:.3f}x the trace's prompt tokens (median): prompts are not the "
                   "trace's lengths (another tokenizer, a chat template: set endpoint.tokenizer)")
    failed = summary["counts"]["requests"]["total"] - summary["counts"]["requests"]["ok"]
    if failed:
        out.append(f"{failed} request(s) did not complete (not in latency statistics)")
    return out


def pool_repeats(repeats: Sequence[dict]) -> dict:
    """One system's summary over several runs of it (`dualpath run --repeats N`), the runs kept under
    `repeats`: counts add up, latency histograms merge (every request of every run), and every other
    number (makespan, throughput, hit rates, balances) is the mean over the runs."""
    def pool(values: list):
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            return {k: pool([v.get(k) for v in present]) for k in present[0]}
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            return float(np.mean(present))
        return present[0] if present and all(v == present[0] for v in present) else None

    out = {key: pool([r.get(key) for r in repeats]) for key in repeats[0] if key not in ("latency", "repeat")}
    out["counts"] = pool_counts([r["counts"] for r in repeats])
    out["latency"] = {m: combined_stats(repeats, m) for m in repeats[0]["latency"]}
    out["complete"] = all(r.get("complete", True) for r in repeats)
    out["warnings"] = list(dict.fromkeys(w for r in repeats for w in r.get("warnings", [])))
    out["repeats"] = list(repeats)
    return out


def pool_counts(counts: Sequence[dict]) -> dict:
    return {k: pool_counts([c[k] for c in counts]) if isinstance(counts[0][k], dict) else sum(c[k] for c in counts)
            for k in counts[0]}


# ----- the stdout table ------------------------------------------------------------------------------
def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


TABLE_COLUMNS = ("system", "requests", "JCT s", "TTFT p50 s", "TTFT p99 s", "TPOT p50 s", "SNIC bal",
                 "attn bal", "hit")


def format_table(summaries: Mapping[str, dict]) -> str:
    """One row per system: a compact, aligned text table for stdout."""
    rows = [TABLE_COLUMNS]
    incomplete = []
    for system, s in summaries.items():
        req = s["counts"]["requests"]
        lat = s["latency"]
        hit = s.get("hit_rate_achieved")
        mark = "*" if s.get("complete") is False else ""  # never a bare JCT for a run with failed rounds
        if mark:
            incomplete.append(system)
        jct = None if mark and not s["counts"].get("agents_done") else s.get("makespan_jct_s")  # no agent finished
        rows.append((system, f"{req['ok']}/{req['total']}", _fmt(jct, 4) + mark,
                     _fmt(lat["ttft_s"]["p50"]), _fmt(lat["ttft_s"]["p99"]), _fmt(lat["tpot_s"]["p50"]),
                     _fmt(s.get("snic_balance")), _fmt(s.get("attention_balance")),
                     "-" if hit is None else f"{hit:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    if incomplete:
        lines.append(f"* incomplete ({', '.join(incomplete)}): rounds failed or were not sent; JCT and "
                     "throughput count only what completed")
    return "\n".join(line.rstrip() for line in lines)


def combined_stats(summaries: Sequence[dict], metric: str) -> dict:
    """Statistics of one latency metric over several summaries (merging their histograms)."""
    hist = merge_hdr(s["latency"][metric]["hdr"] for s in summaries if metric in s.get("latency", {}))
    return stats_from_hdr(hist, sum(s["latency"][metric]["out_of_range"] for s in summaries
                                    if metric in s.get("latency", {})))
