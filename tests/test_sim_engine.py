"""engines/sim: the discrete-event simulator's invariants (DESIGN.md "Contracts", "Engine semantics",
"How we measure"), its event loop and its link model.

One small trace (DS 660B, 2P2D, short trajectories with tool latencies) is run once per system and shared
by the invariant tests; each check is written so that a wrong simulator can fail it.
"""
from __future__ import annotations

import contextlib
import re
import signal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from engines.sim import MemorySink, NullSink, simulate
from harness import metrics
from engines.sim.core import EventLoop
from engines.sim.links import Network, SharedLink
from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec
from traces.errors import InputError
from traces.presets import PRESETS
from traces.schema import Trace
from traces.synth import params_with, synthesize

SYSTEMS = ("basic", "layerwise", "dualpath-rr", "dualpath", "oracle")
DS = model_spec("deepseek-v3.2-660b")
HW = hardware_spec("hopper-paper")
CLUSTER = {"prefill_nodes": 2, "decode_nodes": 2}  # DS 660B's weights need two nodes of expert parallelism
AGENTS = 32
REQUEST_COLUMNS = ("system", "agent_id", "round", "t_scheduled", "t_sent", "t_first_token", "t_second_token",
                   "t_done", "prompt_tokens", "expected_cached_tokens", "cached_tokens", "output_tokens", "pe", "de",
                   "read_side", "read_bytes", "queue_s", "alloc_s", "read_s", "prefill_s", "kv_transfer_s",
                   "status", "error")
AGENT_COLUMNS = ("system", "agent_id", "t_arrival", "t_done", "rounds", "jct_s", "status")
LINK_COLUMNS = ("system", "t_start", "t_end", "node", "link", "direction", "bytes", "traffic")
ENGINE_COLUMNS = ("system", "t", "engine", "role", "batch_requests", "batch_tokens", "attention_s", "step_s",
                  "queued_tokens", "read_queue_tokens", "group")
COLUMNS = {"requests": REQUEST_COLUMNS, "agents": AGENT_COLUMNS, "links": LINK_COLUMNS, "engines": ENGINE_COLUMNS}


# ----- helpers -----------------------------------------------------------------------------------------------
def short_params(**extra):
    """paper-64k with short trajectories (about 10 rounds of ~3K appended tokens)."""
    return params_with(PRESETS["paper-64k"], turns_mean=10, append_mean=3000, **extra)


def run(trace, system, *, model=DS, cluster=CLUSTER, **kw):
    sink = MemorySink()
    info = simulate(trace, system, model=model, hardware=HW, cluster=cluster, sink=sink, **kw)
    frames = {}
    for name, cols in COLUMNS.items():
        table = sink.tables.get(name, {c: [] for c in cols})
        frames[name] = pd.DataFrame({k: list(v) for k, v in table.items()})
    return info, frames


def trace_frame(trace) -> pd.DataFrame:
    """The trace's rounds with the context before each append, computed here from the raw columns."""
    df = pd.DataFrame({c: trace.col(c) for c in ("agent_id", "round", "append_tokens", "gen_tokens",
                                                 "tool_latency_s")})
    inc = df.append_tokens + df.gen_tokens
    df["context_before"] = inc.groupby(df.agent_id).cumsum() - inc
    return df


def make_trace(rounds: dict) -> Trace:
    """A hand-made trace: {agent_id: [(append, gen, tool_latency_s), ...]}."""
    ids, rnd, app, gen, tool = [], [], [], [], []
    for agent, rows in rounds.items():
        for r, (a, g, t) in enumerate(rows):
            ids.append(agent), rnd.append(r), app.append(a), gen.append(g), tool.append(t)
    table = pa.table({"agent_id": pa.array(ids, pa.string()), "round": pa.array(rnd, pa.int64()),
                      "append_tokens": pa.array(app, pa.int64()), "gen_tokens": pa.array(gen, pa.int64()),
                      "tool_latency_s": pa.array(tool, pa.float64())})
    return Trace(table, {"block_size": 512, "source": "test", "agents": "known"})


def node_of(engine: str) -> str:
    return engine.split(".")[0]


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Hang if the block runs longer than `seconds` (a simulation that never ends)."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace():
    return synthesize(short_params(tool_latency_mean=0.5), AGENTS, 5)


@pytest.fixture(scope="module")
def expected(trace):
    return trace_frame(trace)


@pytest.fixture(scope="module")
def runs(trace):
    return {s: run(trace, s) for s in SYSTEMS}


@pytest.fixture(params=SYSTEMS)
def system(request):
    return request.param


# ----- every round, once, in order ---------------------------------------------------------------------------
def test_tables_have_the_contract_columns(runs, system):
    _, f = runs[system]
    for name, cols in COLUMNS.items():
        assert set(cols) <= set(f[name].columns), (name, set(cols) - set(f[name].columns))
    for name in ("requests", "agents", "engines"):
        assert (f[name]["system"] == system).all()


def test_every_round_served_exactly_once_with_status_ok(runs, system, trace, expected):
    _, f = runs[system]
    req = f["requests"]
    assert len(req) == trace.num_rounds
    keys = list(zip(req.agent_id, req["round"]))
    assert len(set(keys)) == len(keys)
    assert set(keys) == set(zip(expected.agent_id, expected["round"]))
    assert (req.status == "ok").all()
    assert req.error.isna().all()


def test_request_times_are_ordered(runs, system):
    req = runs[system][1]["requests"]
    cols = ["t_scheduled", "t_sent", "t_first_token", "t_second_token", "t_done"]
    assert np.isfinite(req[cols].to_numpy()).all()
    assert (req.t_scheduled >= 0).all()
    for a, b in zip(cols, cols[1:]):
        bad = req[req[a] > req[b]]
        assert bad.empty, f"{a} > {b} in {len(bad)} rows, e.g. {bad.iloc[0][cols].to_dict()}"


def test_tpot_is_a_plausible_decode_step(runs, system):
    """TPOT = (t_done - t_first_token) / (output_tokens - 1): DS 660B decodes at 10-100 ms per token."""
    req = runs[system][1]["requests"]
    multi = req[req.output_tokens > 1]
    assert len(multi) > 0.9 * len(req)
    tpot = (multi.t_done - multi.t_first_token) / (multi.output_tokens - 1)
    assert tpot.between(0.010, 0.100).all(), tpot.describe()
    decode = (multi.t_done - multi.t_first_token - multi.kv_transfer_s) / (multi.output_tokens - 1)
    assert decode.between(0.010, 0.100).all() and (decode <= tpot + 1e-12).all()


def test_ttft_breakdown_adds_up(runs, system):
    req = runs[system][1]["requests"]
    parts = req.queue_s + req.alloc_s + req.read_s + req.prefill_s
    assert np.allclose(parts, req.t_first_token - req.t_scheduled, rtol=0, atol=1e-9)
    for col in ("queue_s", "alloc_s", "read_s", "prefill_s", "kv_transfer_s"):
        assert (req[col] >= -1e-12).all(), col
    assert (req.prefill_s > 0).all()  # every round computes at least its append
    if system == "oracle":
        assert (req.read_s == 0).all() and (req.kv_transfer_s == 0).all()
    else:
        assert (req.read_s[req.expected_cached_tokens > 0] > 0).all()


def test_closed_loop_inside_an_agent(runs, system, expected):
    """Round r+1 is scheduled at round r's t_done plus round r+1's tool latency; round 0 at t=0 (offline)."""
    req = runs[system][1]["requests"].merge(expected, on=["agent_id", "round"], validate="one_to_one")
    req = req.sort_values(["agent_id", "round"])
    first = req["round"] == 0
    assert (req.t_scheduled[first] == 0).all()
    prev_done = req.groupby("agent_id").t_done.shift(1)
    later = ~first
    assert (req.tool_latency_s[later] > 0).all()  # the trace has tool latencies: the check has teeth
    assert np.allclose(req.t_scheduled[later], prev_done[later] + req.tool_latency_s[later], rtol=0, atol=1e-9)
    assert (req.t_sent == req.t_scheduled).all()


def test_tokens_follow_the_trace(runs, system, expected):
    """prompt = context so far + append; expected_cached_tokens = the context before the append."""
    req = runs[system][1]["requests"].merge(expected, on=["agent_id", "round"], validate="one_to_one")
    assert (req.expected_cached_tokens == req.context_before).all()
    assert (req.prompt_tokens == req.context_before + req.append_tokens).all()
    assert (req.output_tokens == req.gen_tokens).all()
    assert (req.cached_tokens == req.expected_cached_tokens).all()  # an infinite store: every hit is reused
    assert (req.expected_cached_tokens[req["round"] == 0] == 0).all()
    assert (req.expected_cached_tokens[req["round"] > 0] > 0).all()


def test_agents_table(runs, system, trace):
    info, f = runs[system]
    req, agents = f["requests"], f["agents"]
    assert len(agents) == AGENTS and agents.agent_id.is_unique
    g = req.groupby("agent_id").agg(first=("t_scheduled", "min"), last=("t_done", "max"), served=("round", "count"))
    a = agents.set_index("agent_id").join(g)
    assert (a.status == "ok").all()
    assert (a.rounds == a.served).all()
    assert a.rounds.sum() == trace.num_rounds
    assert np.array_equal(a.t_arrival.to_numpy(), a["first"].to_numpy())
    assert np.array_equal(a.t_done.to_numpy(), a["last"].to_numpy())
    assert np.allclose(a.jct_s, a["last"] - a["first"], rtol=0, atol=1e-9)
    assert info["makespan_s"] == pytest.approx(req.t_done.max(), abs=1e-9)
    assert info["events"] > trace.num_rounds


def test_engines_are_the_cluster(runs, system):
    req = runs[system][1]["requests"]
    assert req.pe.map(node_of).isin(["p0", "p1"]).all()
    assert req.de.map(node_of).isin(["d0", "d1"]).all()
    assert req.pe.nunique() == 16  # 32 agents spread over the two nodes' 16 PEs
    assert set(req.de.unique()) <= {f"d{n}.{g}" for n in range(2) for g in range(8)}


# ----- read paths --------------------------------------------------------------------------------------------
def test_read_sides_per_system(runs, system):
    req, links = runs[system][1]["requests"], runs[system][1]["links"]
    reads = links[links.traffic == "kv_read"] if len(links) else links
    sides = req.read_side.value_counts().to_dict()
    hit = req.expected_cached_tokens > 0
    if system == "oracle":
        assert sides == {"none": len(req)}
        assert (req.read_bytes == 0).all()
        assert len(reads) == 0
        assert len(links) == 0 or not links.traffic.isin(["kv_read", "h2d", "kv_transfer"]).any()
        return
    assert (req.read_side[~hit] == "none").all() and (req.read_side[hit] != "none").all()
    assert (req.read_bytes == req.expected_cached_tokens * DS.kv_bytes_per_token).all()
    read_nodes = set(reads.node)
    if system in ("basic", "layerwise"):
        assert set(sides) == {"pe", "none"}
        assert read_nodes == {"p0", "p1"}
    elif system == "dualpath-rr":
        assert abs(sides["pe"] - sides["de"]) <= max(2, 0.1 * hit.sum()), sides
        assert read_nodes == {"p0", "p1", "d0", "d1"}
    else:  # dualpath: both paths, chosen by queue
        assert sides.get("pe", 0) > 0 and sides.get("de", 0) > 0, sides
        assert read_nodes & {"p0", "p1"} and read_nodes & {"d0", "d1"}


def test_storage_reads_are_recorded_on_the_reading_nodes_snic(runs, system):
    """Per node: the requests' read_bytes = the kv_read bytes on that node's SNIC (rx), within 0.1 %."""
    req, links = runs[system][1]["requests"], runs[system][1]["links"]
    if system == "oracle":
        assert req.read_bytes.sum() == 0
        return
    reading = req[req.read_side != "none"]
    node = np.where(reading.read_side == "pe", reading.pe.map(node_of), reading.de.map(node_of))
    per_request = reading.groupby(node).read_bytes.sum()
    snic = links[(links.link == "snic") & (links.traffic == "kv_read")]
    assert (snic.direction == "rx").all()
    per_link = snic.groupby("node").bytes.sum()
    assert set(per_request.index) == set(per_link.index)
    for n in per_request.index:
        assert per_link[n] == pytest.approx(per_request[n], rel=1e-3), n
    assert per_link.sum() == pytest.approx(req.read_bytes.sum(), rel=1e-3)


def test_kv_read_traffic_appears_only_on_storage_nics_and_dram(runs, system):
    links = runs[system][1]["links"]
    if not len(links):
        return
    reads = links[links.traffic == "kv_read"]
    assert set(reads.link) <= {"snic", "dram"} and (reads.direction == "rx").all()
    if system == "oracle":
        assert len(reads) == 0
        return
    # the DRAM meter records the reads too (the buffer write): exactly what the SNIC brought in
    by = reads.groupby(["node", "link"]).bytes.sum().unstack()
    assert set(by.columns) == {"snic", "dram"}
    assert np.allclose(by["snic"], by["dram"], rtol=1e-6)


# ----- links -------------------------------------------------------------------------------------------------
def check_link_rows(links: pd.DataFrame, window_s: float, constants: SimConstants):
    assert set(links.direction) <= {"rx", "tx"}
    assert all(re.fullmatch(r"snic|dram|cnic\d+", x) for x in links.link)
    assert set(links.traffic) <= {"kv_read", "kv_transfer", "kv_write", "h2d", "other"}
    assert (links.bytes > 0).all()
    assert np.allclose(links.t_end - links.t_start, window_s)
    k = links.t_start / window_s
    assert np.allclose(k, np.round(k))
    snic_cap = HW.snic_bytes_s * constants.snic_efficiency * window_s
    cnic_cap = HW.cnic_bytes_s * constants.cnic_efficiency * window_s
    per = links.groupby(["node", "link", "direction", "t_start"]).bytes.sum().reset_index()
    snic_rx = per[(per.link == "snic") & (per.direction == "rx")]
    cnic = per[per.link.str.startswith("cnic")]
    assert (snic_rx.bytes <= snic_cap * (1 + 1e-6)).all(), snic_rx.bytes.max() / snic_cap
    assert (cnic.bytes <= cnic_cap * (1 + 1e-6)).all(), cnic.bytes.max() / cnic_cap
    return snic_rx, snic_cap


def test_links_stay_within_capacity_and_windows_are_aligned(runs, system):
    links = runs[system][1]["links"]
    if system == "oracle":
        return
    check_link_rows(links, 1.0, SimConstants())
    assert set(links[links.traffic == "kv_transfer"].link.str[:4]) <= {"cnic", "dram"}
    writes = links[links.traffic == "kv_write"]
    assert len(writes) and set(writes.node) <= {"d0", "d1"}  # decode nodes write the new KV back


def test_a_saturated_snic_runs_at_exactly_its_capacity():
    """With a slow storage NIC the reads are the bottleneck: full windows carry capacity x window, never more."""
    trace = synthesize(short_params(), 24, 2)
    k = SimConstants().with_overrides({"snic_efficiency": 0.02})
    _, f = run(trace, "basic", constants=k, window_s=0.5)
    snic_rx, cap = check_link_rows(f["links"], 0.5, k)
    assert snic_rx.bytes.max() == pytest.approx(cap, rel=1e-6)
    assert (snic_rx.bytes > 0.999 * cap).sum() >= 5


# ----- systems compared --------------------------------------------------------------------------------------
def test_oracle_is_never_slower_than_dualpath(runs):
    oracle, dualpath, basic = (runs[s][0]["makespan_s"] for s in ("oracle", "dualpath", "basic"))
    assert oracle <= dualpath * 1.05
    assert oracle <= basic * 1.05


def test_paper_scheduler_respects_the_compute_quota(runs, system):
    eng = runs[system][1]["engines"]
    pre = eng[eng.role == "prefill"]
    busy = pre[pre.batch_requests > 0]
    assert len(busy) and (busy.batch_tokens >= 1).all() and (busy.attention_s > 0).all()
    assert (pre.step_s > 0).all() and pre.engine.map(node_of).isin(["p0", "p1"]).all()
    idle = pre[pre.batch_requests == 0]
    assert (idle.batch_tokens == 0).all() and (idle.attention_s == 0).all()
    if system in ("dualpath", "oracle"):
        quota = SimConstants().compute_quota_s
        over = pre[(pre.attention_s > quota + 1e-9) & (pre.batch_tokens > 1)]
        assert over.empty, over.head()


def test_every_gpu_of_a_group_is_recorded_in_each_step(runs, system):
    """A prefill step is the whole expert-parallel group's: idle GPUs are rows with no attention, so the
    attention balance (max/avg per step) counts the bubbles they sit through."""
    pre = runs[system][1]["engines"]
    pre = pre[pre.role == "prefill"]
    per_step = pre.groupby(["t", "group"]).engine.nunique()
    assert (per_step == 16).all()  # 2 prefill nodes x 8 GPUs, one group
    steps = metrics.attention_balance_per_step(pre)
    frame = pre.groupby(["t", "group"]).attention_s.agg(["max", "mean"])
    frame = frame[frame["mean"] > 0]
    assert np.allclose(np.sort(steps.ratio), np.sort(frame["max"] / frame["mean"]))
    lone = (pre.groupby(["t", "group"]).batch_requests.apply(lambda b: (b > 0).sum()) == 1)
    if lone.any():  # one busy GPU out of 16: max/avg is 16
        assert np.isclose(steps.ratio.max(), 16.0)


def test_decode_engines_are_sampled_every_window(runs, system):
    eng = runs[system][1]["engines"]
    dec = eng[eng.role == "decode"]
    assert np.allclose(dec.t, np.round(dec.t))  # window_s = 1
    counts = dec.groupby("t").engine.nunique()
    assert (counts == 16).all()
    assert dec.batch_requests.max() >= 1


# ----- determinism -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("system", ["basic", "dualpath"])
def test_same_inputs_give_identical_records(runs, system):
    """A fresh trace from the same seed and a fresh run: every column of every table, to the last digit."""
    info, frames = run(synthesize(short_params(tool_latency_mean=0.5), AGENTS, 5), system)
    info0, frames0 = runs[system]
    assert info == info0
    for name in COLUMNS:
        pd.testing.assert_frame_equal(frames[name], frames0[name], check_exact=True)


# ----- arrivals ----------------------------------------------------------------------------------------------
def test_start_times_delay_agents():
    trace = synthesize(short_params(), 12, 3)
    rng = np.random.default_rng(7)
    start = np.concatenate(([0.0], np.cumsum(rng.exponential(20.0, 11))))  # Poisson, 0.05 agents/s
    _, f = run(trace, "dualpath", start_s=start)
    req, agents = f["requests"], f["agents"]
    ids = pd.unique(trace_frame(trace).agent_id)
    want = pd.Series(start, index=ids)
    first = req[req["round"] == 0].set_index("agent_id").t_scheduled
    assert np.array_equal(first[ids].to_numpy(), start)
    assert (req.t_scheduled >= req.agent_id.map(want) - 1e-12).all()
    a = agents.set_index("agent_id")
    assert np.array_equal(a.t_arrival[ids].to_numpy(), start)
    assert np.allclose(a.jct_s[ids], a.t_done[ids] - start)


def test_not_before_holds_rounds_until_their_timestamps():
    trace = synthesize(short_params(tool_latency_mean=0.2), 8, 4)
    exp = trace_frame(trace)
    agent_index = pd.factorize(exp.agent_id)[0]
    spacing = np.where(agent_index % 2 == 0, 40.0, 0.5)                # even agents: a round every 40 s
    not_before = agent_index * 5.0 + exp["round"].to_numpy() * spacing
    start = agent_index[trace.agent_starts()] * 2.0                     # earlier than the timestamps
    _, f = run(trace, "dualpath", start_s=start.astype(float), not_before_s=not_before)
    req = f["requests"].merge(exp.assign(not_before=not_before), on=["agent_id", "round"], validate="one_to_one")
    req = req.sort_values(["agent_id", "round"])
    prev_done = req.groupby("agent_id").t_done.shift(1)
    first = req["round"] == 0
    want = np.where(first, np.maximum(req.agent_id.map(dict(zip(pd.unique(exp.agent_id), start))), req.not_before),
                    np.maximum(prev_done + req.tool_latency_s, req.not_before))
    assert np.allclose(req.t_scheduled, want, rtol=0, atol=1e-9)
    held = req.not_before > prev_done + req.tool_latency_s
    assert held.sum() > 0 and (~held & ~first).sum() > 0  # both rules were exercised


def test_start_times_must_match_the_agents(trace):
    with pytest.raises(ValueError):
        simulate(trace, "basic", model=DS, hardware=HW, cluster=CLUSTER, start_s=np.zeros(3), sink=NullSink())


def test_unknown_system_and_missing_cluster_key_are_input_errors(trace):
    with pytest.raises(InputError):
        simulate(trace, "dualpth", model=DS, hardware=HW, cluster=CLUSTER, sink=NullSink())
    with pytest.raises(InputError) as info:
        simulate(trace, "basic", model=DS, hardware=HW, cluster={"prefill_nodes": 1}, sink=NullSink())
    assert info.value.field == "cluster.decode_nodes"


# ----- exact decode timing -----------------------------------------------------------------------------------
def test_a_lone_agent_decodes_at_exactly_the_cost_models_step():
    """One agent: every round decodes alone on its DE, so each iteration is decode_step_s(1, ctx) with the
    time-averaged context ctx = prompt + gen / 2, and t_done = decode start + (gen - 1) steps."""
    trace = make_trace({"solo": [(3000, 50, 0.0), (500, 2, 1.0), (800, 200, 0.5), (100, 1, 0.0), (64, 30, 0.0)]})
    cluster = {**CLUSTER, "prefill_group_nodes": 2, "decode_group_nodes": 2}
    for system in ("basic", "dualpath", "oracle"):
        _, f = run(trace, system, cluster=cluster)
        req = f["requests"].sort_values("round")
        cost = CostModel(DS, HW, SimConstants(), prefill_ep=16, decode_ep=16)
        for row in req.itertuples():
            ctx = row.prompt_tokens + row.output_tokens / 2
            step = cost.decode_step_s(1, ctx, cost.min_ctx_topk(ctx))
            start = row.t_first_token + row.kv_transfer_s
            if row.output_tokens <= 1:
                assert row.t_second_token == row.t_done == pytest.approx(start, abs=1e-9)
                continue
            assert row.t_second_token - start == pytest.approx(step, rel=1e-9), (system, row.round)
            assert row.t_done - start == pytest.approx((row.output_tokens - 1) * step, rel=1e-9), (system, row.round)


# ----- runs that must end ------------------------------------------------------------------------------------
def test_small_staging_buffers_do_not_deadlock():
    trace = synthesize(short_params(), 4, 11)
    with deadline(3.0):
        info, f = run(trace, "layerwise", cluster={**CLUSTER, "dram_buffer_gb": 2})
    assert len(f["requests"]) == trace.num_rounds


def test_waiting_for_a_full_buffer_is_allocation_and_the_parts_still_add_up():
    """Layer-wise prefill keeps a PE-path read in the staging buffer until the request is computed: with a
    buffer smaller than one read, reads wait for room, and that wait is alloc_s (not queue_s); with the
    model's 80 GB nothing waits for room. Either way queue + alloc + read + prefill is the TTFT."""
    trace = synthesize(short_params(), 16, 11)
    small = run(trace, "layerwise", cluster={**CLUSTER, "dram_buffer_gb": 0.3})[1]["requests"]
    roomy = run(trace, "layerwise")[1]["requests"]
    for req in (small, roomy):
        parts = req.queue_s + req.alloc_s + req.read_s + req.prefill_s
        assert np.allclose(parts, req.t_first_token - req.t_scheduled, rtol=0, atol=1e-9)
        assert (req[["queue_s", "alloc_s", "read_s", "prefill_s"]] >= -1e-9).all().all()
    assert small.alloc_s.sum() > 0.2 * (small.t_first_token - small.t_scheduled).sum()
    assert roomy.alloc_s.sum() == 0


def test_two_decode_groups_share_the_work_and_one_full_group_does_not_stop_the_other(trace):
    """Two DE groups (4 decode nodes, groups of 2): phase 1 spreads the requests over both; with DE HBM
    so small that a group often has no room, the other group's requests still go out (the run ends)."""
    cluster = {"prefill_nodes": 2, "decode_nodes": 4, "decode_group_nodes": 2}
    for constants in (None, SimConstants(decode_activation_gb=15.0)):
        with deadline(20.0):
            _, f = run(trace, "dualpath", cluster=cluster, constants=constants)
        req = f["requests"]
        assert len(req) == trace.num_rounds
        groups = req.de.map(lambda e: int(e[1]) // 2)  # d0, d1 -> group 0; d2, d3 -> group 1
        share = groups.value_counts(normalize=True)
        assert set(share.index) == {0, 1} and share.min() > 0.3, share


def test_an_interrupted_run_hands_over_what_it_recorded(trace):
    """Ctrl-C mid-run (here: raised by the progress callback after 40 rounds): the 40 finished rounds,
    the telemetry so far and every agent (unfinished ones `cancelled`) still reach the sink."""
    done = []

    def progress(n):
        done.append(n)
        if len(done) == 40:
            raise KeyboardInterrupt
    sink = MemorySink()
    with pytest.raises(KeyboardInterrupt):
        simulate(trace, "dualpath", model=DS, hardware=HW, cluster=CLUSTER, sink=sink, progress=progress)
    req, agents = sink.tables["requests"], sink.tables["agents"]
    assert len(req["round"]) == 40
    assert len(agents["agent_id"]) == AGENTS and "cancelled" in agents["status"]
    assert len(sink.tables["links"]["bytes"]) > 0 and len(sink.tables["engines"]["t"]) > 0


def test_a_request_larger_than_decode_hbm_ends_the_run():
    trace = make_trace({"big": [(50_000, 10, 0.0)]})
    with deadline(3.0):
        try:
            run(trace, "basic", model=model_spec("qwen2.5-32b"))
        except InputError:
            pass


def test_a_model_that_does_not_fit_is_an_error_not_a_hang():
    trace = make_trace({"a": [(1000, 10, 0.0)]})
    with deadline(3.0):
        with pytest.raises(InputError) as info:
            simulate(trace, "basic", model=DS, hardware=HW, cluster={"prefill_nodes": 1, "decode_nodes": 1},
                     sink=NullSink())
    assert info.value.field == "cluster.prefill_nodes" and "no HBM for KV on a prefill GPU" in info.value.problem
    with pytest.raises(InputError) as info:
        simulate(trace, "basic", model=DS, hardware=HW, cluster={"prefill_nodes": 2, "decode_nodes": 1},
                 sink=NullSink())
    assert info.value.field == "cluster.decode_nodes"


def test_whole_request_prefill_refuses_a_prompt_no_prefill_gpu_can_hold():
    """basic holds a request's whole KV in a prefill GPU's HBM (~15 GB for DS 660B at 2 prefill nodes:
    ~310K tokens); layer-wise prefill holds one layer at a time and runs it."""
    cost = CostModel(DS, HW, SimConstants(), prefill_ep=16, decode_ep=16)
    tokens = int(cost.prefill_kv_capacity_bytes() / DS.kv_bytes_per_token) + 1000
    trace = make_trace({"huge": [(tokens, 2, 0.0)]})
    cluster = {"prefill_nodes": 2, "decode_nodes": 4}
    with pytest.raises(InputError) as info:
        simulate(trace, "basic", model=DS, hardware=HW, cluster=cluster, sink=NullSink())
    assert info.value.field == "trace" and "basic prefills whole requests" in info.value.problem
    with deadline(10.0):
        _, f = run(trace, "layerwise", cluster=cluster)
    assert len(f["requests"]) == 1


# ----- the event loop ----------------------------------------------------------------------------------------
class TestEventLoop:
    def test_time_order_and_fifo_among_equal_times(self):
        loop, seen = EventLoop(), []
        for name, t in [("a", 2.0), ("b", 1.0), ("c", 2.0), ("d", 1.0), ("e", 0.5), ("f", 2.0)]:
            loop.at(t, lambda n=name: seen.append((loop.now, n)))
        loop.run()
        assert seen == [(0.5, "e"), (1.0, "b"), (1.0, "d"), (2.0, "a"), (2.0, "c"), (2.0, "f")]
        assert loop.events == 6 and len(loop) == 0

    def test_events_scheduled_for_now_run_after_those_already_queued_for_now(self):
        loop, seen = EventLoop(), []

        def first():
            seen.append("first")
            loop.at(loop.now, lambda: seen.append("spawned"))
        loop.at(1.0, first)
        loop.at(1.0, lambda: seen.append("second"))
        loop.run()
        assert seen == ["first", "second", "spawned"]

    def test_never_runs_an_event_in_the_past(self):
        loop, seen = EventLoop(), []

        def late():
            loop.at(loop.now - 5.0, lambda: seen.append(loop.now))
            loop.after(-1.0, lambda: seen.append(loop.now))
        loop.at(10.0, late)
        loop.run()
        assert seen == [10.0, 10.0]

    def test_after_and_handler_arguments(self):
        loop, seen = EventLoop(), []
        loop.at(3.0, lambda: loop.after(0.25, seen.append, "x"))
        loop.run()
        assert seen == ["x"] and loop.now == 3.25

    def test_clock_is_monotone_under_random_scheduling(self):
        rng = np.random.default_rng(1)
        loop, times = EventLoop(), []

        def handler():
            times.append(loop.now)
            if len(times) < 2000:
                loop.after(float(rng.choice([0.0, rng.exponential(1.0)])), handler)
                if rng.random() < 0.5:
                    loop.at(loop.now + float(rng.normal()), handler)
        loop.at(0.0, handler)
        loop.run()
        assert all(a <= b for a, b in zip(times, times[1:]))

    def test_run_until_and_stop(self):
        loop, seen = EventLoop(), []
        for t in (1.0, 2.0, 3.0):
            loop.at(t, seen.append, t)
        loop.run(until=2.5)
        assert seen == [1.0, 2.0] and loop.now == 2.5 and len(loop) == 1
        loop.run()
        assert seen == [1.0, 2.0, 3.0]
        loop2, seen2 = EventLoop(), []
        for t in (1.0, 2.0, 3.0):
            loop2.at(t, seen2.append, t)
        loop2.run(stop=lambda: len(seen2) >= 2)
        assert seen2 == [1.0, 2.0]


# ----- links -------------------------------------------------------------------------------------------------
def network(window_s=1.0):
    loop = EventLoop()
    return loop, Network(loop, window_s)


def link_bytes(net, link, traffic="other"):
    from engines.sim.links import TRAFFIC
    col = link.id * len(TRAFFIC) + TRAFFIC.index(traffic)
    out = [row[col] if col < len(row) else 0.0 for row in net.windows]
    while out and out[-1] == 0.0:  # a window that starts exactly at the last instant holds nothing
        out.pop()
    return out


class TestNetwork:
    def test_a_lone_flow_runs_at_the_narrowest_link(self):
        loop, net = network()
        a = net.add_link(0, "cnic0", "tx", 100.0)
        b = net.add_link(1, "cnic0", "rx", 40.0)
        done = []
        loop.at(1.0, lambda: net.start(200.0, (a, b), (), "kv_transfer", lambda: done.append(loop.now)))
        loop.run()
        assert done == [pytest.approx(1.0 + 200.0 / 40.0)]
        assert sum(link_bytes(net, a, "kv_transfer")) == pytest.approx(200.0)

    def test_two_equal_flows_share_a_link_equally(self):
        loop, net = network()
        link = net.add_link(0, "snic", "rx", 10.0)
        done = {}
        for name in ("x", "y"):
            net.start(50.0, (link,), (), "other", lambda n=name: done.__setitem__(n, loop.now))
        loop.run()
        assert done == {"x": pytest.approx(10.0), "y": pytest.approx(10.0)}

    def test_unequal_flows_finish_at_the_processor_sharing_times(self):
        loop, net = network()
        link = net.add_link(0, "cnic0", "tx", 10.0)
        done = {}
        net.start(20.0, (link,), (), "other", lambda: done.__setitem__("small", loop.now))
        net.start(60.0, (link,), (), "other", lambda: done.__setitem__("big", loop.now))
        loop.run()
        # both at 5/s until the small one is done at 4 s (20 bytes), then the big one alone: 40 left at 10/s
        assert done["small"] == pytest.approx(4.0)
        assert done["big"] == pytest.approx(8.0)
        assert link_bytes(net, link) == pytest.approx([10.0] * 8)  # full capacity in every window

    def test_a_late_arrival_slows_the_first_flow(self):
        loop, net = network()
        link = net.add_link(0, "cnic0", "tx", 10.0)
        done = {}
        net.start(100.0, (link,), (), "other", lambda: done.__setitem__("a", loop.now))
        loop.at(2.0, lambda: net.start(30.0, (link,), (), "other", lambda: done.__setitem__("b", loop.now)))
        loop.run()
        # a alone 0-2 s (20 bytes); both at 5/s: b done at 2 + 30/5 = 8 s; a has 100-20-30 = 50 left: 13 s
        assert done == {"a": pytest.approx(13.0), "b": pytest.approx(8.0)}

    def test_a_flow_is_limited_by_its_most_shared_link(self):
        loop, net = network()
        shared = net.add_link(0, "cnic0", "tx", 10.0)
        own = net.add_link(1, "cnic0", "rx", 100.0)
        done = {}
        net.start(40.0, (shared, own), (), "other", lambda: done.__setitem__("a", loop.now))
        net.start(40.0, (shared,), (), "other", lambda: done.__setitem__("b", loop.now))
        loop.run()
        assert done == {"a": pytest.approx(8.0), "b": pytest.approx(8.0)}

    def test_links_never_carry_more_than_capacity(self):
        loop, net = network(window_s=0.5)
        links = [net.add_link(0, f"cnic{i}", "tx", 8.0) for i in range(3)]
        rng = np.random.default_rng(3)
        sizes = []
        for _ in range(40):
            t = float(rng.uniform(0, 10))
            path = tuple(links[i] for i in sorted(set(rng.integers(0, 3, size=2))))
            size = float(rng.uniform(1, 30))
            sizes.append((path, size))
            loop.at(t, lambda p=path, s=size: net.start(s, p, (), "other", lambda: None))
        loop.run()
        assert net.active == 0
        for link in links:
            per_window = link_bytes(net, link)
            assert max(per_window) <= 8.0 * 0.5 * (1 + 1e-9)
            assert sum(per_window) == pytest.approx(sum(s for p, s in sizes if link in p))

    def test_meters_record_without_constraining(self):
        loop, net = network()
        link = net.add_link(0, "cnic0", "tx", 10.0)
        meter = net.add_link(0, "dram", "tx", None)
        done = []
        net.start(25.0, (link,), (meter,), "h2d", lambda: done.append(loop.now))
        loop.run()
        assert done == [pytest.approx(2.5)]
        assert link_bytes(net, meter, "h2d") == pytest.approx([10.0, 10.0, 5.0])

    def test_zero_byte_flow_completes_at_once(self):
        loop, net = network()
        link = net.add_link(0, "cnic0", "tx", 10.0)
        done = []
        loop.at(3.0, lambda: net.start(0.0, (link,), (), "other", lambda: done.append(loop.now)))
        loop.run()
        assert done == [3.0]

    def test_write_record_spreads_bytes_over_windows(self):
        loop, net = network(window_s=1.0)
        link = net.add_link(0, "snic", "tx", 10.0)
        net.record((link,), "kv_write", 0.5, 2.5, 20.0)
        assert link_bytes(net, link, "kv_write") == pytest.approx([5.0, 10.0, 5.0])


class TestSharedLink:
    def setup_method(self):
        self.loop, self.net = network()
        self.link = self.net.add_link(0, "snic", "rx", 10.0)
        self.meter = self.net.add_link(0, "dram", "rx", None)
        self.shared = SharedLink(self.net, self.link, (self.meter,), "kv_read")
        self.done = {}

    def start(self, name, size, at=0.0):
        self.loop.at(at, lambda: self.shared.start(size, lambda: self.done.__setitem__(name, self.loop.now)))

    def test_processor_sharing_times(self):
        for name, size in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
            self.start(name, size)
        self.loop.run()
        # 3 flows at 10/3: a done after 10 each (t = 3); b, c at 5: b after 10 more (t = 5); c alone: t = 6
        assert self.done == {"a": pytest.approx(3.0), "b": pytest.approx(5.0), "c": pytest.approx(6.0)}
        assert link_bytes(self.net, self.link, "kv_read") == pytest.approx([10.0] * 6)
        assert link_bytes(self.net, self.meter, "kv_read") == pytest.approx([10.0] * 6)

    def test_staggered_arrivals(self):
        self.start("a", 20.0)
        self.start("b", 10.0, at=1.0)
        self.start("c", 5.0, at=10.0)
        self.loop.run()
        # a alone 0-1 (10 done); a and b at 5/s: both finish at t = 3; c alone from 10: t = 10.5
        assert self.done == {"a": pytest.approx(3.0), "b": pytest.approx(3.0), "c": pytest.approx(10.5)}
        assert sum(link_bytes(self.net, self.link, "kv_read")) == pytest.approx(35.0)
        assert self.shared.active == 0

    def test_a_remainder_below_the_clocks_resolution_still_finishes(self):
        """Late in a run (t = 57 s) a read whose last bytes take less than one ulp of the clock at a fast
        SNIC must finish, not fire at the same instant forever (seen in a capacity probe)."""
        loop, net = network()
        link = net.add_link(0, "snic", "rx", 27.4e9)
        shared = SharedLink(net, link, (), "kv_read")
        t = 57.06876306806012
        done = []
        loop.at(t, lambda: shared.start(1.5e-6, lambda: done.append(loop.now)))
        with deadline(2.0):
            loop.run()
        assert done and done[0] == pytest.approx(t, abs=1e-12) and loop.events < 10

    def test_matches_network_flows_on_one_link(self):
        rng = np.random.default_rng(5)
        arrivals = [(float(rng.uniform(0, 20)), float(rng.uniform(1, 50))) for _ in range(30)]
        for i, (t, size) in enumerate(arrivals):
            self.start(i, size, at=t)
        self.loop.run()
        loop, net = network()
        link = net.add_link(0, "snic", "rx", 10.0)
        ref = {}
        for i, (t, size) in enumerate(arrivals):
            loop.at(t, lambda i=i, s=size: net.start(s, (link,), (), "kv_read", lambda: ref.__setitem__(i, loop.now)))
        loop.run()
        assert self.done.keys() == ref.keys()
        for i in ref:
            assert self.done[i] == pytest.approx(ref[i], rel=1e-9, abs=1e-9)


def test_hit_granularity_rounds_every_hit_down_to_whole_blocks(trace, expected, runs):
    """`sim.hit_granularity_tokens` (the live cluster's store keeps whole Full Blocks): every round's hit is
    its context rounded down to a multiple of it; the reads shrink, the computed tokens grow by as much."""
    block = 512
    _, f = run(trace, "dualpath", constants=SimConstants().with_overrides({"hit_granularity_tokens": block}))
    got = f["requests"].set_index(["agent_id", "round"]).sort_index()
    exact = runs["dualpath"][1]["requests"].set_index(["agent_id", "round"]).sort_index()
    ctx = expected.set_index(["agent_id", "round"]).context_before.sort_index()
    assert (got.cached_tokens == ctx // block * block).all()
    assert (exact.cached_tokens == ctx).all() and (got.cached_tokens < exact.cached_tokens).any()
    assert (got.prompt_tokens == exact.prompt_tokens).all()
    assert got.read_bytes.sum() < exact.read_bytes.sum()


# ----- garbage collection during a run -----------------------------------------------------------------------
class ThresholdSink(MemorySink):
    """Notes the collector's thresholds whenever the simulation hands it records; can fail on the first."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.seen, self.fail = set(), fail

    def _add(self, kind, batch):
        import gc
        self.seen.add(gc.get_threshold())
        if self.fail:
            raise RuntimeError("sink failed")
        super()._add(kind, batch)


def test_a_run_collects_rarely_and_gives_the_thresholds_back(trace):
    """While it runs the simulation collects garbage at RUN_THRESHOLDS (full collections of its large heap
    cost a fifth of a big run); afterwards, and after a failure, the process has its own thresholds again."""
    import gc

    from engines.sim.run import RUN_THRESHOLDS
    before = gc.get_threshold()
    assert before != RUN_THRESHOLDS
    sink = ThresholdSink()
    simulate(trace, "dualpath", model=DS, hardware=HW, cluster=CLUSTER, sink=sink)
    assert sink.seen == {RUN_THRESHOLDS}
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError, match="sink failed"):
        simulate(trace, "basic", model=DS, hardware=HW, cluster=CLUSTER, sink=ThresholdSink(fail=True))
    assert gc.get_threshold() == before
