"""Capacity search (harness/capacity.py): the verdict of one probe from request rows, the paper's stop
and steady-state rules, reruns of unsteady probes, and the doubling-then-bisecting search."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import capacity

SLO = {"ttft_s": 4.0, "tpot_s": 0.05}
CFG = capacity.settings({"capacity": {"warmup_s": 100.0, "window_s": 50.0, "lookback_s": 300.0}})


def rows(ttft_of_t, horizon: float, *, every_s: float = 1.0, tpot: float = 0.03, status=None) -> pd.DataFrame:
    """One request every `every_s` seconds up to the horizon, TTFT given as a function of its time."""
    t = np.arange(0.0, horizon, every_s)
    ttft = np.array([ttft_of_t(x) for x in t], dtype=float)
    out = np.full(len(t), 11)
    return pd.DataFrame({"t_scheduled": t, "t_first_token": t + ttft, "t_done": t + ttft + 10 * tpot,
                         "output_tokens": out, "status": status if status is not None else ["ok"] * len(t)})


def test_settings_derive_the_horizons():
    assert CFG["horizon_s"] == 100 + 300 + 50 and CFG["max_horizon_s"] == 450 + 2 * 300
    default = capacity.settings({})
    assert default["horizon_s"] == 600 + 1800 + 150 and default["lookback_s"] == 1800


def test_a_flat_ttft_within_the_slo_passes_and_is_steady():
    p = capacity.judge(rows(lambda t: 1.0, 450), 0.2, SLO, CFG, 450)
    assert p.passed and p.steady is True and p.ttft_s == pytest.approx(1.0) and p.tpot_s == pytest.approx(0.03)
    assert p.requests == 350  # scheduled in [100, 450): one a second


def test_the_last_window_over_the_slo_fails_by_the_paper_stop_rule():
    p = capacity.judge(rows(lambda t: 0.5 + t / 90, 450), 0.2, SLO, CFG, 450)  # ~5.5 s at the end
    assert not p.passed and "paper stop rule" in p.reason and p.ttft_last_window_s > 4
    assert p.ttft_s < 4  # the window's mean alone would have passed


def test_tpot_over_the_slo_fails():
    p = capacity.judge(rows(lambda t: 1.0, 450, tpot=0.06), 0.2, SLO, CFG, 450)
    assert not p.passed and "TPOT" in p.reason


def test_a_percentile_slo_counts_timeouts_as_misses():
    n = 450
    status = ["ok"] * n
    for i in range(120, 130):  # 10 timeouts early in the window, none in the last one
        status[i] = "timeout"
    req = rows(lambda t: 1.0, n, status=status)
    req.loc[[s != "ok" for s in status], "t_first_token"] = np.nan
    p = capacity.judge(req, 0.2, {**SLO, "percentile": 99}, CFG, n)
    assert not p.passed and p.ttft_s == math.inf  # 10 of 350 is more than 1 %: p99 is a miss, not NaN
    ok90 = capacity.judge(req, 0.2, {**SLO, "percentile": 90}, CFG, n)
    assert ok90.passed and ok90.ttft_s == pytest.approx(1.0)


def test_no_request_in_the_window_fails():
    p = capacity.judge(rows(lambda t: 1.0, 90), 0.2, SLO, CFG, 450)
    assert not p.passed and p.requests == 0 and p.reason == "no request in the measurement window"


def test_an_unsteady_pass_is_rerun_longer_until_the_ttft_crosses_the_slo():
    """TTFT creeping up 1 s per 300 s: within the SLO at the horizon but not steady, so the probe runs
    one look-back longer, and again, until the last window crosses 4 s (a system that cannot keep up)."""
    horizons = []

    def run_until(h):
        horizons.append(h)
        return rows(lambda t: 1.0 + t / 300, h), None
    p = capacity.probe(run_until, 0.2, SLO, CFG)
    assert horizons == [450, 750, 1050] and not p.passed and p.horizon_s == 1050 and "stop rule" in p.reason


def test_an_unsteady_pass_at_the_max_horizon_is_judged_by_the_slo_alone():
    horizons = []

    def run_until(h):
        horizons.append(h)
        return rows(lambda t: 1.0 + 0.5 * math.sin(t / 40), h), None  # noisy but bounded
    p = capacity.probe(run_until, 0.2, SLO, {**CFG, "max_horizon_s": 750})
    assert horizons[0] == 450 and horizons[-1] == 750 and p.horizon_s == 750
    assert p.passed or p.steady is not False


def test_a_trace_that_runs_out_of_agents_fails_the_probe():
    p = capacity.probe(lambda h: (rows(lambda t: 1.0, h), "the trace has 3 agents"), 5.0, SLO, CFG)
    assert not p.passed and p.reason == "the trace has 3 agents" and p.horizon_s == 450


def test_the_search_doubles_then_bisects_to_the_tolerance():
    tried = []

    def probe(rate):
        tried.append(rate)
        return capacity.Probe(rate, rate <= 0.37, "", 1, None, None, None, None)
    best, probes = capacity.search(probe, {**CFG, "rate_aps_start": 0.1, "rate_aps_max": 2.0, "max_probes": 20})
    assert tried[:3] == [0.1, 0.2, 0.4] and tried[3] == pytest.approx(0.3)
    assert 0.37 / 1.05 <= best <= 0.37 and len(probes) == len(tried)
    fails = [r for r in tried if r > 0.37]
    assert (min(fails) - best) / best <= CFG["tolerance"]


def test_the_search_halves_when_the_start_fails_and_stops_at_the_max():
    best, probes = capacity.search(lambda r: capacity.Probe(r, r <= 0.03, "", 1, None, None, None, None),
                                   {**CFG, "rate_aps_start": 0.1, "max_probes": 20})
    assert [p.rate_aps for p in probes[:3]] == [0.1, 0.05, 0.025] and 0.03 / 1.05 <= best <= 0.03
    best, probes = capacity.search(lambda r: capacity.Probe(r, True, "", 1, None, None, None, None),
                                   {**CFG, "rate_aps_start": 0.5, "rate_aps_max": 2.0, "max_probes": 20})
    assert best == 2.0 and [p.rate_aps for p in probes] == [0.5, 1.0, 2.0]


# ----- the command, end to end ------------------------------------------------------------------------
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_server import Reply, ScriptedServer  # noqa: E402

SMALL = {"turns_mean": 4, "append_mean": 100, "gen_mean": 20, "max_context": 4000, "first_append_mean": 200}


def capacity_scenario(tmp_path: Path, **top) -> Path:
    scenario = {"name": "cap", "trace": {"synth": {"preset": "paper-32k", "agents": 10, "seed": 3, **SMALL}},
                "systems": ["basic", "dualpath"], "slo": {"ttft_s": 4.0, "tpot_s": 0.05},
                "model": "deepseek-27b", "hardware": "hopper-paper",
                "cluster": {"prefill_nodes": 1, "decode_nodes": 1},
                "capacity": {"rate_aps_start": 0.5, "rate_aps_max": 2.0, "warmup_s": 20, "lookback_s": 40,
                             "window_s": 10, "max_probes": 3},
                **top}
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_capacity_on_the_simulator_writes_its_table_and_refuses_a_used_directory(cli, tmp_path):
    scen = capacity_scenario(tmp_path)
    out = tmp_path / "out"
    res = cli("run", scen, "--capacity", "-o", out)
    assert res.rc == 0, res.err
    table = pd.read_csv(out / "capacity.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and set(summary["capacity"]) == {"basic", "dualpath"}
    for system in ("basic", "dualpath"):
        probes = table[table["system"] == system]
        assert list(probes["rate_aps"]) == [0.5, 1.0, 2.0]  # light load: every probe passes, up to the max
        assert probes["passed"].all() and (probes["horizon_s"] >= 70).all()
        assert summary["capacity"][system]["capacity_aps"] == 2.0
    assert "basic        capacity >= 2.000 agents/s (passed every probe up to capacity.rate_aps_max 2" in res.out
    assert summary["capacity"]["basic"]["capacity_kind"] == "lower_bound"
    assert "capacity_ratio" not in summary and "capacity ratio: not known" in res.out  # no ratio of two bounds
    assert res.err.count(" APS  pass ") == 6
    again = cli("run", scen, "--capacity", "-o", out)
    assert again.rc == 2 and "already holds a run" in again.err and len(again.err_lines) == 1


def test_an_interrupted_capacity_search_keeps_its_probes(cli, tmp_path, monkeypatch):
    real, calls = capacity.probe, []

    def probe_then_ctrl_c(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(capacity, "probe", probe_then_ctrl_c)
    out = tmp_path / "out"
    res = cli("run", capacity_scenario(tmp_path), "--capacity", "-o", out)
    assert res.rc == 130 and "kept 2 probe(s)" in res.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and len(summary["capacity"]["basic"]["probes"]) == 2
    assert len(pd.read_csv(out / "capacity.csv")) == 2


def test_a_trace_too_short_for_the_horizon_bounds_the_search(cli, tmp_path):
    trace = tmp_path / "t.parquet"
    assert cli("trace", "synth", "--preset", "paper-32k", "--agents", "20", "--seed", "1", "-o", trace,
               *[f"--set={k}={v}" for k, v in SMALL.items()]).rc == 0
    scen = capacity_scenario(tmp_path, trace={"path": str(trace)}, systems=["dualpath"])
    out = tmp_path / "out"
    res = cli("run", scen, "--capacity", "-o", out)
    assert res.rc == 0, res.err
    probes = json.loads((out / "summary.json").read_text())["capacity"]["dualpath"]["probes"]
    # 20 agents at 0.5/s arrive for ~40 s of a 70 s horizon: that rate cannot be judged, nor 0.25/s once
    # its probe is rerun longer (110 s); at 0.125/s the 20 agents last the whole horizon
    assert [p["rate_aps"] for p in probes] == [0.5, 0.25, 0.125]
    assert all(not p["passed"] and p["reason"].startswith("the trace has 20 agents") for p in probes[:2])
    assert probes[2]["passed"] and "the trace ran out of agents at 0.25 agents/s" in res.err


def test_capacity_against_an_endpoint_finds_where_its_queue_builds_up(cli, tmp_path):
    """A server that answers one request at a time in ~100 ms (about 10 requests/s): agents of ~4 rounds
    at 1/s are served at once; at 8/s the queue grows and TTFT passes the SLO: the search ends between."""
    with ScriptedServer(Reply(first_token_s=0.005, token_s=0.005), max_concurrent=1) as srv:
        scen = capacity_scenario(
            tmp_path, backend="http", systems=["external"], slo={"ttft_s": 0.5},
            endpoint={"url": srv.url, "model": "scripted", "timeout_s": 10.0},
            capacity={"rate_aps_start": 1.0, "rate_aps_max": 8.0, "warmup_s": 1.0, "lookback_s": 1.0,
                      "window_s": 0.5, "max_probes": 4})
        res = cli("run", scen, "--capacity", "-o", tmp_path / "out")
    assert res.rc == 0, res.err
    probes = json.loads((tmp_path / "out" / "summary.json").read_text())["capacity"]["external"]["probes"]
    assert probes[0]["rate_aps"] == 1.0 and probes[0]["passed"], probes[0]  # ~4 requests/s for 10
    failed = [p for p in probes if not p["passed"]]
    assert failed and all(p["ttft_s"] > 0.5 or p["ttft_last_window_s"] > 0.5 for p in failed), probes
    assert all(not p["passed"] for p in probes if p["rate_aps"] >= 8), probes  # ~32 requests/s for 10
    cap = json.loads((tmp_path / "out" / "summary.json").read_text())["capacity"]["external"]["capacity_aps"]
    assert 1.0 <= cap < 8.0


# ----- what a capacity is: converged, a lower bound, unconverged (issue 11) ------------------------------
def _p(rate, passed):
    return {"rate_aps": rate, "passed": passed}


@pytest.mark.parametrize("best, probes, kind", [
    (2.0, [_p(0.5, True), _p(1.0, True), _p(2.0, True)], "lower_bound"),
    (1.0, [_p(0.5, True), _p(1.0, True)], "unconverged"),            # max_probes ran out while doubling
    (1.0, [_p(1.0, True), _p(2.0, False), _p(1.5, False)], "unconverged"),
    (1.0, [_p(1.0, True), _p(1.04, False)], "converged"),
    (None, [_p(1.0, False), _p(0.5, False)], "none"),
])
def test_capacity_outcome(best, probes, kind):
    from harness.capacity import outcome
    assert outcome(best, probes, {"rate_aps_max": 2.0, "tolerance": 0.05}) == kind


def test_capacity_ratio_of_a_bound_says_so():
    from harness.capacity import ratio
    assert ratio((1.0, "converged"), (2.0, "lower_bound")) == (2.0, "lower_bound")
    assert ratio((2.0, "lower_bound"), (1.0, "converged")) == (0.5, "upper_bound")
    assert ratio((2.0, "lower_bound"), (2.0, "lower_bound")) == (None, "unknown")
    assert ratio((1.0, "converged"), (1.5, "converged")) == (1.5, "exact")
