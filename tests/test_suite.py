"""`dualpath suite`: every scenario of a directory, sweeps included, into one index and one report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BASE = """name: {name}
backend: sim
trace: {{synth: {{preset: smoke, agents: 3, seed: 1}}}}
model: {model}
hardware: hopper-paper
cluster: {{prefill_nodes: 1, decode_nodes: 1}}
systems: [basic, dualpath]
{extra}
"""


def suite_dir(tmp_path: Path, broken: bool = False) -> Path:
    d = tmp_path / "suite"
    d.mkdir()
    (d / "a-sweep.yaml").write_text(BASE.format(name="a", model="deepseek-27b", extra=(
        "sweep:\n  trace.synth.agents: [3, 5]\nexpected:\n"
        "  - {figure: Fig. A, system: basic, metric: counts.agents, value: 5, point: {trace.synth.agents: 5}}")))
    (d / "b-single.yaml").write_text(BASE.format(name="b", model="deepseek-v3.2-660b" if broken else "qwen2.5-32b",
                                                 extra="expected:\n  - {figure: Fig. B, system: dualpath, "
                                                 "metric: makespan_jct_s, value: 1000000}"))
    return d


def test_suite_runs_every_scenario_into_one_index_and_report(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("suite", suite_dir(tmp_path), "-j", "2", "-o", out)
    assert r.rc == 0, r.err  # a miss is a finding, not a failure
    frame = pd.read_parquet(out / "index.parquet")
    assert sorted(frame.drop_duplicates("path")["scenario"]) == ["a", "a", "b"]
    assert set(frame["status"]) == {"ok"} and len(frame) == 3 * 2
    assert (out / "a" / "agents=5" / "summary.json").is_file() and (out / "b" / "default" / "summary.json").is_file()
    assert "a/agents=5  Fig. A" in r.out and "ours vs expected: 1 ok, 1 miss or missing, of 2" in r.out
    report = (out / "report.md").read_text()
    assert "3 points in 2 scenarios: 3 ok" in report and "| b/default | Fig. B | dualpath | makespan_jct_s |" in report
    again = cli("suite", tmp_path / "suite", "-o", out, "--resume")
    assert again.rc == 0 and "(0 finished now, 3 already finished, 0 failed)" in again.err


def test_suite_only_and_a_failed_point(cli, tmp_path):
    d = suite_dir(tmp_path, broken=True)
    r = cli("suite", d, "--only", "b-*", "-o", tmp_path / "b")
    assert r.rc == 1  # DS 660B on one prefill node fails: a failed point
    frame = pd.read_parquet(tmp_path / "b" / "index.parquet")
    assert list(frame["scenario"].unique()) == ["b"] and list(frame["status"]) == ["failed"]
    assert "error: point b/default" in r.err
    none = cli("suite", d, "--only", "zzz", "-o", tmp_path / "none")
    assert none.rc == 2 and len(none.err_lines) == 1 and "match --only zzz" in none.err
    assert not (tmp_path / "none").exists()


def test_suite_refuses_two_scenarios_of_one_name(cli, tmp_path):
    d = suite_dir(tmp_path)
    (d / "c.yaml").write_text((d / "b-single.yaml").read_text())
    r = cli("suite", d, "-o", tmp_path / "out")
    assert r.rc == 2 and len(r.err_lines) == 1 and r.err.startswith(f"{d / 'c.yaml'}:1: name: ")
    assert not (tmp_path / "out").exists()


def test_the_paper_suite_runs_cut_down(cli, tmp_path):
    """Paper scenarios end to end, shrunk with --set (the whole suite takes hours: README)."""
    r = cli("suite", REPO / "scenarios" / "paper", "--only", "fig13*", "--only", "fig14*", "-j", "2",
            "--set", "trace.synth.agents=6", "--set", "trace.synth.preset=paper-32k", "-o", tmp_path / "out")
    assert r.rc == 0, r.err
    assert "Fig. 13" in r.out and "ours vs expected:" in r.out
    assert "note: --set changed the scenario; the expected values are for the scenario as written" in r.out
    assert "Fig. 14" not in r.out  # its entries are for 512 and 1,024 agents, and --set made it 6
    frame = pd.read_parquet(tmp_path / "out" / "index.parquet")
    assert set(frame["scenario"]) == {"fig13-snic-balance", "fig14-attention-balance"} and set(frame["status"]) == {"ok"}
