"""`dualpath run`: end to end in-process (the `cli` fixture), on the paper's scenario cut down to a few
short agents: the results directory and its contract, --json, bad input, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from harness.results import load_results

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMALL = ("--set", "trace.synth.agents=8", "--set", "trace.synth.turns_mean=10",
         "--set", "trace.synth.append_mean=3000", "--set", "systems=[basic,dualpath]")
TABLES = ("requests", "agents", "links", "engines")
FILES = ("scenario.yaml", "summary.json", "latency.hlog") + tuple(f"{t}.parquet" for t in TABLES)
CONTRACT = {
    "requests": ("system", "agent_id", "round", "t_scheduled", "t_sent", "t_first_token", "t_second_token",
                 "t_done", "prompt_tokens", "expected_cached_tokens", "cached_tokens", "output_tokens", "pe", "de",
                 "read_side", "read_bytes", "queue_s", "alloc_s", "read_s", "prefill_s", "kv_transfer_s",
                 "status", "error"),
    "agents": ("system", "agent_id", "t_arrival", "t_done", "rounds", "jct_s", "status"),
    "links": ("system", "t_start", "t_end", "node", "link", "direction", "bytes", "traffic"),
    "engines": ("system", "t", "engine", "role", "batch_requests", "batch_tokens", "attention_s", "step_s",
                "queued_tokens", "read_queue_tokens"),
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One small run shared by the read-only checks (the `cli` fixture is function-scoped: call main here)."""
    import contextlib
    import io

    from harness.cli import main

    out_dir = tmp_path_factory.mktemp("run") / "r"
    out, err = io.StringIO(), io.StringIO()
    mp = pytest.MonkeyPatch()
    mp.setenv("DUALPATH_PROGRESS", "0")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["run", str(SCENARIO), *SMALL, "-o", str(out_dir)])
    finally:
        mp.undo()
    return rc, out.getvalue(), err.getvalue(), out_dir


def test_small_run_succeeds_and_writes_every_file(small_run):
    rc, out, err, run_dir = small_run
    assert rc == 0, err
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(FILES)  # no stream or temp files left
    assert err.strip().splitlines()[-1] == f"results: {run_dir}"
    assert "basic" in out and "dualpath" in out


def test_results_have_the_contract_columns(small_run):
    run_dir = small_run[3]
    results = load_results(run_dir)
    for table, cols in CONTRACT.items():
        assert set(cols) <= set(results[table].columns), (table, set(cols) - set(results[table].columns))
        assert set(results[table]["system"]) == {"basic", "dualpath"}, table
        raw = pq.read_table(run_dir / f"{table}.parquet")
        assert raw.num_rows == len(results[table])


def test_results_are_consistent(small_run):
    run_dir = small_run[3]
    results = load_results(run_dir)
    req, agents, links = results["requests"], results["agents"], results["links"]
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    assert scenario["trace"]["synth"]["agents"] == 8 and scenario["systems"] == ["basic", "dualpath"]
    window = scenario["telemetry"]["window_s"]
    for system in ("basic", "dualpath"):
        r, a = req[req.system == system], agents[agents.system == system]
        assert len(a) == 8 and (a.status == "ok").all()
        assert len(r) == a.rounds.sum() and (r.status == "ok").all()
        assert not r.duplicated(["agent_id", "round"]).any()
        assert (r.t_scheduled <= r.t_first_token).all() and (r.t_first_token <= r.t_done).all()
        l = links[(links.system == system) & (links.traffic == "kv_read") & (links.link == "snic")]
        assert l.bytes.sum() == pytest.approx(r.read_bytes.sum(), rel=1e-3)
    assert np.allclose(links.t_end - links.t_start, window)
    # the same trace for both systems
    key = ["agent_id", "round", "prompt_tokens", "expected_cached_tokens", "output_tokens"]
    b = req[req.system == "basic"][key].sort_values(key[:2]).reset_index(drop=True)
    d = req[req.system == "dualpath"][key].sort_values(key[:2]).reset_index(drop=True)
    assert b.equals(d)


def test_summary_json(small_run):
    run_dir = small_run[3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert list(summary["systems"]) == ["basic", "dualpath"]
    assert summary["meta"]["scenario"]["cluster"] == {"prefill_nodes": 2, "decode_nodes": 4}
    hlog = (run_dir / "latency.hlog").read_text()
    assert "Tag=basic," in hlog and "Tag=dualpath," in hlog


def test_json_prints_one_object_with_the_systems(cli, tmp_path):
    res = cli("run", SCENARIO, *SMALL, "--set", "trace.synth.agents=4", "-o", tmp_path / "r", "--json")
    assert res.rc == 0, res.err
    summary = res.json()  # the whole of stdout is one JSON object
    assert set(summary["systems"]) == {"basic", "dualpath"}
    assert summary["status"] == "ok"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["systems"].keys() == summary["systems"].keys()


@pytest.mark.parametrize("override,key", [
    ("cluster.prefil_nodes=2", "cluster.prefil_nodes"),
    ("systems=[basic,dualpth]", "systems[1]"),
    ("sim.snic_eficiency=0.5", "sim.snic_eficiency"),
    ("sim.snic_efficiency=-1", "sim.snic_efficiency"),
    ("sim.read_parallelism=fast", "sim.read_parallelism"),
    ("trace.synth.agents=0", "trace.synth.agents"),
    ("model=deepseek-v9", "model"),
    ("hardware=tpu-v9", "hardware"),
    ("arrival.mode=poison", "arrival.mode"),
])
def test_bad_input_is_one_line_exit_2_and_no_results(cli, tmp_path, override, key):
    out_dir = tmp_path / "r"
    res = cli("run", SCENARIO, *SMALL, "--set", override, "-o", out_dir)
    assert res.rc == 2
    assert len(res.err_lines) == 1, res.err
    assert key in res.err_lines[0]
    assert "Traceback" not in res.err and res.out == ""
    assert not out_dir.exists()


def test_bad_input_without_output_dir_creates_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("run", SCENARIO, *SMALL, "--set", "cluster.prefil_nodes=2")
    assert res.rc == 2 and len(res.err_lines) == 1
    assert list(tmp_path.iterdir()) == []


def test_zero_snic_efficiency_is_bad_input(cli, tmp_path):
    out_dir = tmp_path / "r"
    res = cli("run", SCENARIO, *SMALL, "--set", "sim.snic_efficiency=0", "-o", out_dir)
    assert res.rc == 2 and len(res.err_lines) == 1 and "sim.snic_efficiency" in res.err
    assert not out_dir.exists()


def test_unknown_sim_constant_in_a_file_names_the_file(cli, tmp_path):
    data = yaml.safe_load(SCENARIO.read_text())
    data["sim"] = {**(data.get("sim") or {}), "snic_eficiency": 0.5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    res = cli("run", path, *SMALL, "-o", tmp_path / "r")
    assert res.rc == 2 and len(res.err_lines) == 1
    assert res.err_lines[0].startswith(f"{path}:") and "sim.snic_eficiency" in res.err_lines[0]


def test_an_output_dir_holding_a_run_is_refused(cli, tmp_path, small_run):
    run_dir = small_run[3]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    res = cli("run", SCENARIO, *SMALL, "-o", run_dir)
    assert res.rc == 2 and len(res.err_lines) == 1 and str(run_dir) in res.err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_the_same_scenario_twice_gives_identical_records(cli, tmp_path, small_run):
    res = cli("run", SCENARIO, *SMALL, "-o", tmp_path / "again")
    assert res.rc == 0, res.err
    for table in TABLES:
        a = pq.read_table(small_run[3] / f"{table}.parquet")
        b = pq.read_table(tmp_path / "again" / f"{table}.parquet")
        assert a.schema == b.schema and a.num_rows == b.num_rows > 0, table
        # every value to the last digit (NaN where the other has NaN: decode rows have no attention time)
        pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_exact=True)
    s1 = json.loads((small_run[3] / "summary.json").read_text())["systems"]
    s2 = json.loads((tmp_path / "again" / "summary.json").read_text())["systems"]
    for system in s1:
        for d in (s1[system], s2[system]):
            d.pop("wall_s", None), d.pop("sim_requests_per_wall_s", None)
        assert s1[system] == s2[system]


def test_overrides_reach_the_simulator(cli, tmp_path):
    """Poisson arrivals delay agents; a slower storage NIC caps the SNIC windows at its rate."""
    res = cli("run", SCENARIO, *SMALL, "--set", "systems=[basic]", "--set", "arrival.mode=poisson",
              "--set", "arrival.rate_aps=0.2", "--set", "sim.snic_efficiency=0.1", "--set", "telemetry.window_s=1",
              "-o", tmp_path / "r")
    assert res.rc == 0, res.err
    results = load_results(tmp_path / "r")
    agents, req, links = results["agents"], results["requests"], results["links"]
    t = np.sort(agents.t_arrival.to_numpy())
    assert t[0] == 0 and (np.diff(t) > 0).all()
    first = req[req["round"] == 0].set_index("agent_id").t_scheduled
    assert np.array_equal(first[agents.agent_id].to_numpy(), agents.t_arrival.to_numpy())
    snic = links[(links.link == "snic") & (links.direction == "rx")].groupby(["node", "t_start"]).bytes.sum()
    cap = 50e9 * 0.1 * 1.0
    assert snic.max() <= cap * (1 + 1e-6)
    assert snic.max() > 0.5 * cap  # the reads did hit the (lowered) limit
    assert yaml.safe_load((tmp_path / "r" / "scenario.yaml").read_text())["sim"]["snic_efficiency"] == 0.1
