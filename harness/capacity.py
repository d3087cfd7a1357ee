"""Capacity search: the largest Poisson agent arrival rate (agents/s) a system serves within its SLO.

Each probe runs the system with agents arriving as a Poisson process at one rate for `horizon_s`
(default: warm-up + 30 min + 150 s, long enough for the paper's steady-state rule), on the simulator
or against an endpoint alike. A probe passes when, over the measurement window (requests scheduled
after `warmup_s` and before the horizon), the mean TTFT and mean TPOT (or the scenario's SLO
percentile) are within the SLO, and fails otherwise. The paper's stopping rules (reference/paper.md
5.4) are applied to the TTFT series: it fails as soon as the TTFT of the last `window_s` (150 s)
exceeds the TTFT SLO (the paper's "TTFT > 4 s"), and it is marked steady when that window's mean
TTFT is within 5 % of the window `lookback_s` (30 minutes) earlier. A request scheduled in the window that never
produced a first token counts as an SLO miss.

The paper runs until TTFT > 4 s or a steady state; a probe that passes at its horizon while its TTFT
is not yet steady is therefore run again, one look-back longer each time, up to
`max_horizon_s` (default: the horizon plus two look-backs), where the SLO alone decides. A trace too
short to keep agents arriving until the horizon fails the probe (it would measure a draining system).

Search: double the rate from `rate_aps_start` while probes pass (up to `rate_aps_max`), then bisect
between the highest pass and the lowest failure until they are within `tolerance` (relative) or
`max_probes` probes ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from harness.metrics import slo_statistic

STEADY_LOOKBACK_S = 1800.0
STEADY_CHANGE = 0.05
DEFAULTS = {"rate_aps_start": 0.05, "rate_aps_max": 20.0, "tolerance": 0.05, "warmup_s": 600.0,
            "window_s": 150.0, "lookback_s": STEADY_LOOKBACK_S, "max_probes": 10}


@dataclass
class Probe:
    rate_aps: float
    passed: bool
    reason: str
    requests: int
    ttft_s: float | None      # mean (or the SLO percentile) over the measurement window
    tpot_s: float | None
    ttft_last_window_s: float | None
    steady: bool | None
    horizon_s: float | None = None  # how long it ran (longer than the horizon when TTFT was not steady)
    short_trace: bool = False       # the trace ran out of agents before the horizon


def settings(scenario: dict) -> dict:
    out = {**DEFAULTS, **(scenario.get("capacity") or {})}
    out.setdefault("horizon_s", out["warmup_s"] + out["lookback_s"] + out["window_s"])
    out.setdefault("max_horizon_s", out["horizon_s"] + 2 * out["lookback_s"])
    out["max_horizon_s"] = max(out["max_horizon_s"], out["horizon_s"])
    return out


def probe(run_until: Callable[[float], tuple[pd.DataFrame, str | None]], rate: float, slo: dict, cfg: dict
          ) -> Probe:
    """One probe at `rate`: `run_until(horizon)` runs the system with Poisson agents at that rate until
    `horizon` and returns its request rows and, if the trace ran out of agents before it, why. Reruns a
    passing probe whose TTFT is not steady with a longer horizon (see the module doc)."""
    horizon = float(cfg["horizon_s"])
    while True:
        requests, shortfall = run_until(horizon)
        p = judge(requests, rate, slo, cfg, horizon)
        p.horizon_s = horizon
        if shortfall is not None:
            p.passed, p.reason, p.short_trace = False, shortfall, True
        if not p.passed or p.steady is not False or horizon >= cfg["max_horizon_s"]:
            return p
        horizon = min(float(cfg["max_horizon_s"]), horizon + float(cfg["lookback_s"]))


def judge(requests: pd.DataFrame, rate: float, slo: dict, cfg: dict, horizon_s: float) -> Probe:
    """The verdict of one probe from its request rows (any backend's)."""
    ttft_slo, tpot_slo = slo.get("ttft_s", math.inf), slo.get("tpot_s", math.inf)
    pct = slo.get("percentile")
    t_sched = requests["t_scheduled"].to_numpy(dtype=float) if len(requests) else np.zeros(0)
    first = requests["t_first_token"].to_numpy(dtype=float) if len(requests) else np.zeros(0)
    done = requests["t_done"].to_numpy(dtype=float) if len(requests) else np.zeros(0)
    out_tok = requests["output_tokens"].to_numpy(dtype=float) if len(requests) else np.zeros(0)
    ok = (requests["status"].astype(str).to_numpy() == "ok") if len(requests) else np.zeros(0, dtype=bool)
    window = (t_sched >= cfg["warmup_s"]) & (t_sched <= horizon_s)
    ttft = np.where(ok & np.isfinite(first), first - t_sched, np.inf)[window]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (out_tok > 1), (done - first) / (out_tok - 1), np.nan)
    tpot = np.where(ok, tpot, np.inf)[window]  # a failed request misses every target (as in metrics)
    ttft_v, tpot_v = slo_statistic(ttft, pct), slo_statistic(tpot, pct)
    last = (t_sched > horizon_s - cfg["window_s"]) & (t_sched <= horizon_s)
    last_ttft = np.where(ok & np.isfinite(first), first - t_sched, np.inf)[last]
    last_mean = float(np.mean(last_ttft)) if len(last_ttft) else None
    lookback = cfg.get("lookback_s", STEADY_LOOKBACK_S)
    early = (t_sched > horizon_s - cfg["window_s"] - lookback) & (t_sched <= horizon_s - lookback)
    early_ttft = (first - t_sched)[early & ok & np.isfinite(first)]
    steady = None
    if last_mean is not None and len(early_ttft) and math.isfinite(last_mean):
        steady = abs(last_mean / float(np.mean(early_ttft)) - 1) <= STEADY_CHANGE
    n = int(window.sum())
    if n == 0:
        return Probe(rate, False, "no request in the measurement window", 0, None, None, last_mean, steady)
    if last_mean is not None and last_mean > ttft_slo:
        reason = f"TTFT of the last {cfg['window_s']:g} s {_fmt(last_mean)} > {ttft_slo:g} s (paper stop rule)"
        return Probe(rate, False, reason, n, ttft_v, tpot_v, last_mean, steady)
    what = f"p{pct:g}" if pct else "mean"
    if ttft_v is None or ttft_v > ttft_slo:
        return Probe(rate, False, f"{what} TTFT {_fmt(ttft_v)} > {ttft_slo:g} s", n, ttft_v, tpot_v, last_mean, steady)
    if tpot_v is not None and tpot_v > tpot_slo:
        return Probe(rate, False, f"{what} TPOT {_fmt(tpot_v)} > {tpot_slo:g} s", n, ttft_v, tpot_v, last_mean, steady)
    return Probe(rate, True, "within the SLO", n, ttft_v, tpot_v, last_mean, steady)


def _fmt(x) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x:.3f} s"


def search(run_probe: Callable[[float], Probe], cfg: dict, report: Callable[[Probe], None] | None = None
           ) -> tuple[float | None, list[Probe]]:
    """Largest passing rate and every probe, in the order run."""
    probes: list[Probe] = []
    best, worst = None, None  # highest pass, lowest failure
    rate = float(cfg["rate_aps_start"])
    while len(probes) < int(cfg["max_probes"]):
        p = run_probe(rate)
        probes.append(p)
        if report:
            report(p)
        if p.passed:
            best = rate if best is None else max(best, rate)
        else:
            worst = rate if worst is None else min(worst, rate)
        if worst is None:
            if rate >= cfg["rate_aps_max"]:
                break
            rate = min(rate * 2, cfg["rate_aps_max"])
        elif best is None:
            rate = rate / 2
            if rate < 1e-6:
                break
        else:
            if (worst - best) / best <= cfg["tolerance"]:
                break
            rate = (best + worst) / 2
    return best, probes


def format_probe(system: str, p: Probe) -> str:
    return (f"{system:<12} {p.rate_aps:7.3f} APS  {'pass' if p.passed else 'FAIL':<4}  TTFT {_fmt(p.ttft_s):>9}  "
            f"TPOT {_fmt(p.tpot_s):>9}  last-window TTFT {_fmt(p.ttft_last_window_s):>9}  "
            f"steady {p.steady}  ran {p.horizon_s or 0:.0f} s  requests {p.requests}  ({p.reason})")


def outcome(best: float | None, probes: list, cfg: dict) -> str:
    """What a search's capacity is: `converged` (a pass and a failure within `tolerance`), `lower_bound`
    (every probe passed up to `rate_aps_max`: the capacity is at least that), `unconverged` (`max_probes`
    ran out first) or `none` (no rate passed)."""
    def passed(p):
        return p["passed"] if isinstance(p, dict) else p.passed

    def rate(p):
        return p["rate_aps"] if isinstance(p, dict) else p.rate_aps
    if best is None:
        return "none"
    fails = [rate(p) for p in probes if not passed(p)]
    if not fails:
        return "lower_bound" if best >= float(cfg["rate_aps_max"]) else "unconverged"
    return "converged" if (min(fails) - best) / best <= float(cfg["tolerance"]) else "unconverged"


def describe(cap: float | None, kind: str, cfg: dict) -> str:
    """The capacity as the table shows it: `>= 20.000` for a lower bound, a note when unconverged."""
    if cap is None:
        return "- (no rate passed)"
    if kind == "lower_bound":
        return (f">= {cap:.3f} agents/s (passed every probe up to capacity.rate_aps_max {float(cfg['rate_aps_max']):g}: "
                "a lower bound; raise it to find the capacity)")
    if kind == "unconverged":
        return (f"{cap:.3f} agents/s (unconverged: capacity.max_probes {int(cfg['max_probes'])} ran out before the "
                f"tolerance {float(cfg['tolerance']):g})")
    return f"{cap:.3f} agents/s"


def ratio(first: tuple[float | None, str], second: tuple[float | None, str]) -> tuple[float | None, str]:
    """second / first with what it is: `exact`, `lower_bound`, `upper_bound`, `approximate`, or None and
    `unknown` (both are lower bounds, or a side has no capacity)."""
    (a, ka), (b, kb) = first, second
    if not a or not b or (ka == kb == "lower_bound") or "none" in (ka, kb):
        return None, "unknown"
    if "unconverged" in (ka, kb):
        return b / a, "approximate"
    if kb == "lower_bound":
        return b / a, "lower_bound"
    if ka == "lower_bound":
        return b / a, "upper_bound"
    return b / a, "exact"
