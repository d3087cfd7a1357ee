"""`expected:` blocks (harness/expected.py): validated like every other key, ours against them after
`dualpath run`'s table and in the report, and the paper's scenarios (scenarios/paper/) carry them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from harness.expected import METRICS, compare, dig, format_rows
from harness.sweep import expand, points

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "scenarios" / "paper"
HEAD = """name: e
backend: sim
trace: {synth: {preset: smoke, agents: 3, seed: 1}}
model: deepseek-27b
hardware: hopper-paper
cluster: {prefill_nodes: 1, decode_nodes: 1}
systems: [basic, dualpath]
expected:
"""


def write(tmp_path: Path, entries: str) -> Path:
    path = tmp_path / "e.yaml"
    path.write_text(HEAD + entries, encoding="utf-8")
    return path


@pytest.mark.parametrize("entry, key, words", [
    ("  - {figure: F, system: basic, metric: makespan_jct, value: 10}", "expected[1].metric",
     "unknown metric 'makespan_jct' (did you mean makespan_jct_s?)"),
    ("  - {figure: F, system: basic, metric: latency.ttft.p50, value: 1}", "expected[1].metric", "unknown metric"),
    ("  - {figure: F, system: basic, value: 1}", "expected[1].metric", "required"),
    ("  - {figure: F, system: basic, metric: makespan_jct_s, value: -3}", "expected[1].value", "number > 0"),
    ("  - {figure: F, system: basic, metric: makespan_jct_s, value: 3, tolerance: 0}", "expected[1].tolerance", "share"),
    ("  - {figure: F, system: basic, metric: makespan_jct_s, value: 3, aprox: true}", "expected[1].aprox",
     "did you mean approx"),
    ("  - {figure: F, system: basic, metric: makespan_jct_s, value: 3, point: {seed: 1}}", "expected[1].point.seed",
     "it has none"),
    ("  - [1, 2]", "expected[1]", "mapping"),
    ("  - {figure: F, system: basic, metric: makespan_jct_s, value: 1e3}", "expected[1].value", "write 1000.0"),
])
def test_a_bad_expected_entry_is_one_line_naming_file_line_and_key(cli, tmp_path, entry, key, words):
    path = write(tmp_path, "  - {figure: F, system: basic, metric: makespan_jct_s, value: 3}\n" + entry)
    r = cli("run", path, "-o", tmp_path / "out")
    assert r.rc == 2 and len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith(f"{path}:10: {key}: "), r.err
    assert words in r.err
    assert not (tmp_path / "out").exists()


def test_run_prints_ours_vs_expected_after_the_table_and_the_report_shows_it(cli, tmp_path):
    path = write(tmp_path, "  - {figure: Fig. 1, system: basic, metric: makespan_jct_s, value: 1000000}\n"
                           "  - {figure: Fig. 2, system: dualpath, metric: counts.agents, value: 3}\n"
                           "  - {figure: Fig. 3, system: dualpath, metric: throughput.agents_per_s, value: 100, approx: true}")
    r = cli("run", path, "-o", tmp_path / "out", "--report")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    table_end = next(i for i, line in enumerate(lines) if line.startswith("dualpath "))
    rows = {line.split()[0] + " " + line.split()[1]: line for line in lines[table_end:] if line.startswith("Fig.")}
    assert "miss" in rows["Fig. 1"] and "0.00" in rows["Fig. 1"]  # ours is seconds, not a million
    assert rows["Fig. 2"].split()[-2:] == ["ok", "(±15%)"]  # 3 agents: ratio exactly 1
    assert "~100 " in rows["Fig. 3"]
    assert "ours vs expected: 1 ok, 2 miss or missing, of 3" in r.out
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Ours vs the paper" in report and "| Fig. 2 | dualpath | counts.agents | 3 | 3 | 1.00 | ok (±15%) |" in report


# ----- compare ----------------------------------------------------------------------------------------
def test_dig_follows_keys_that_hold_dots():
    summary = {"latency": {"ttft_s": {"p99": 1.0, "p99.9": 2.0}}, "x": True}
    assert dig(summary, "latency.ttft_s.p99.9") == 2.0
    assert dig(summary, "latency.ttft_s.p99") == 1.0
    assert dig(summary, "latency.ttft_s.p50") is None and dig(summary, "x") is None


@given(value=st.floats(0.01, 1e6), ratio=st.floats(0.01, 10), tol=st.floats(0.01, 1))
def test_ok_means_within_the_tolerance_of_the_value(value, ratio, tol):
    summary = {"systems": {"basic": {"makespan_jct_s": value * ratio}}}
    e = {"figure": "F", "system": "basic", "metric": "makespan_jct_s", "value": value, "tolerance": tol, "approx": False}
    (row,) = compare([e], summary)
    assert row["ratio"] == pytest.approx(ratio)
    assert row["verdict"] == ("ok" if abs(row["ratio"] - 1) <= tol else "miss")


def test_point_selects_entries_and_a_missing_system_is_missing_not_ok():
    e = [{"figure": "F", "system": "oracle", "metric": "makespan_jct_s", "value": 1, "tolerance": 0.1, "approx": False,
          "point": {"trace.synth.agents": 4}}]
    summary = {"systems": {"basic": {"makespan_jct_s": 1}}}
    assert compare(e, summary, {"trace.synth.agents": 8}) == []
    (row,) = compare(e, summary, {"trace.synth.agents": 4})
    assert row["verdict"] == "-" and "0 ok, 1 miss or missing" in format_rows([row])
    assert compare([{**e[0], "system": "x", "metric": "capacity_aps"}],
                   {"capacity": {"x": {"capacity_aps": 1.05}}}, {"trace.synth.agents": 4})[0]["verdict"] == "ok"


# ----- the paper as scenarios ---------------------------------------------------------------------------
def test_the_paper_scenarios_hold_every_experiment_with_expected_values():
    files = sorted(PAPER.glob("*.yaml"))
    assert len(files) >= 10
    figures, total = set(), 0
    for f in files:
        scenario, pts = expand(str(f))
        assert scenario.get("expected"), f
        figures |= {e["figure"].split()[0] + " " + e["figure"].split()[1] for e in scenario["expected"]}
        for e in scenario["expected"]:  # every entry applies to some point, to a system that runs
            assert any(all(keys.get(k) == v for k, v in (e.get("point") or {}).items()) for _, keys, _ in pts), (f, e)
            assert e["system"] in scenario["systems"], (f, e)
            assert e["metric"] in METRICS
        total += len(pts)
    assert {"Fig. 7", "Fig. 8", "Fig. 9", "Fig. 10", "Fig. 11", "Fig. 12", "Fig. 13", "Fig. 14", "Table 3"} <= figures
    grid = expand(str(PAPER / "fig7-ds660b.yaml"))[1] + expand(str(PAPER / "fig7-ds27b.yaml"))[1]
    assert len(grid) == 2 * 3 * 4
    offline, _ = expand(str(PAPER / "offline-ds660b-64k.yaml"))
    assert "sweep" not in offline and "zip" not in offline and points(offline) == [{}]
    big, big_points = expand(str(PAPER / "table3-48p96d-offline.yaml"))
    assert len(big_points) == 1 and big["trace"]["synth"]["agents"] == 49_152  # a file of its own
    assert total >= 60


def test_table3_2p4d_is_fig7_ds660b_48k_2048_agents():
    scenario, _ = expand(str(PAPER / "fig7-ds660b.yaml"))
    t3 = [e for e in scenario["expected"] if e["figure"] == "Table 3"]
    assert t3 and t3[0]["value"] == 3167 and not t3[0]["approx"]
    assert t3[0]["point"] == {"trace.synth.preset": "paper-48k", "trace.synth.agents": 2048}
    json.dumps(scenario["expected"])  # plain data
