"""Bounds that need the trace (harness/run_limits.py): the run-length floor is a lower bound of what the
simulator then takes, refusals come before anything is written, and a run that crosses the window bound
anyway stops with one error line and keeps every row it measured."""
from __future__ import annotations

import json

import pytest

from harness import run_limits
from harness.scenario import load_scenario
from harness.trace_input import scenario_trace
from traces.errors import InputError

SCENARIO = ("name: lim\n"
            "trace: {synth: {preset: smoke, agents: 3, seed: 2}}\n"
            "model: deepseek-v3.2-660b\n"
            "hardware: hopper-paper\n"
            "cluster: {prefill_nodes: 2, decode_nodes: 4}\n"
            "systems: [basic, dualpath, oracle]\n"
            "telemetry: {window_s: 0.01}\n")


@pytest.fixture
def scen(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    return path


def test_the_run_length_floor_is_below_every_systems_makespan(scen, cli, tmp_path):
    s = load_scenario(scen)
    trace = scenario_trace(s["trace"])
    _, _, _, cost = run_limits._cost(s)
    floor = run_limits.run_length_floor_s(trace, cost.decode_step_s(1, 0.0, 0.0))
    assert floor > 0
    r = cli("run", scen, "-o", tmp_path / "out", "--json")
    assert r.rc == 0, r.err
    for name, summary in json.loads(r.out)["systems"].items():
        assert summary["makespan_jct_s"] >= floor, (name, summary["makespan_jct_s"], floor)


def test_a_run_that_outlasts_the_window_bound_stops_and_keeps_its_rows(scen, cli, tmp_path, monkeypatch):
    s = load_scenario(scen)
    trace = scenario_trace(s["trace"])
    _, _, _, cost = run_limits._cost(s)
    floor_windows = run_limits.run_length_floor_s(trace, cost.decode_step_s(1, 0.0, 0.0)) / 0.01
    monkeypatch.setattr(run_limits, "MAX_WINDOWS", int(floor_windows) + 1)  # passes the check, not the run
    r = cli("run", scen, "-o", tmp_path / "out")
    assert r.rc == 1, r.err
    errors = [line for line in r.err_lines if line.startswith("error:")]
    assert len(errors) == 1 and "stopped after" in errors[0] and "telemetry.window_s" in errors[0], r.err
    assert r.err_lines[-1] == f"results: {tmp_path / 'out'}"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert summary["systems"]["basic"]["complete"] is False
    assert "dualpath" not in summary["systems"]  # the systems after it are not run
    assert (tmp_path / "out" / "engines.parquet").is_file() and (tmp_path / "out" / "requests.parquet").is_file()
    assert "Traceback" not in r.err


def test_the_memory_estimate_is_checked_against_the_machine(scen, monkeypatch):
    s = load_scenario(scen)
    trace = scenario_trace(s["trace"])
    run_limits.check_run(s, trace)  # fits
    monkeypatch.setattr(run_limits, "machine_memory_bytes", lambda: 1e6)
    with pytest.raises(InputError) as e:
        run_limits.check_run(s, trace)
    assert e.value.field == "telemetry.window_s" and "half this machine's 0.0 GB" in e.value.problem


def test_errors_found_after_loading_name_the_line_of_their_key(scen, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("run", scen, "--set", "cluster.dram_buffer_gb=0.0001")
    assert r.rc == 2 and r.err_lines == [r.err_lines[0]] and r.err.startswith("--set: cluster.dram_buffer_gb:")
    scen.write_text(SCENARIO.replace("window_s: 0.01", "window_s: 0.001").replace("agents: 3", "agents: 3, "
                                     "tool_latency_mean: 1.0e+6"))
    r = cli("run", scen)
    assert r.rc == 2 and r.err.startswith(f"{scen}:7: telemetry.window_s:"), r.err
    assert not (tmp_path / "results").exists()
