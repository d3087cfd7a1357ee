"""`dualpath gate`: simulator results compare exactly, noisy results on a bootstrap interval, inputs that
cannot be compared are refused in one line; JUnit and markdown outputs; `dualpath run --repeats`."""
from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import bootstrap, gate
from harness.results import load_results
from traces.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from noisy_backend import noisy_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMOKE = REPO / "scenarios" / "smoke.yaml"
# the default scenario, cut to 12 agents (still storage-bound enough for Basic to feel a slower SNIC)
REDUCED = ("--set", "trace.synth.agents=12", "--set", "systems=[basic,dualpath]")
TINY = ("--set", "trace.synth.agents=4", "--set", "trace.synth.turns_mean=8", "--set", "trace.synth.append_mean=3000",
        "--set", "systems=[basic,dualpath]")


def run(out: Path, *args) -> Path:
    import contextlib
    import io

    from harness.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(["run", *map(str, args), "-o", str(out)])
    assert rc == 0, err.getvalue()
    return out


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    """The reduced default scenario twice, and once with a slower storage NIC."""
    root = tmp_path_factory.mktemp("gate")
    return {"a": run(root / "a", DEFAULT, *REDUCED), "b": run(root / "b", DEFAULT, *REDUCED),
            "slow_snic": run(root / "snic", DEFAULT, *REDUCED, "--set", "sim.snic_efficiency=0.4")}


def rows_of(out: str) -> dict[tuple[str, str], list[str]]:
    """The gate's table: (system, metric) -> the row's cells."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("system "))
    rows = {}
    for line in lines[head + 1:]:
        if line.startswith("gate: "):
            break
        cells = line.split()
        rows[(cells[0], cells[1])] = cells
    return rows


@pytest.mark.slow
def test_the_default_scenario_against_itself_passes(cli, default_runs):
    r = cli("gate", "--baseline", default_runs["a"], "--candidate", default_runs["b"])
    assert r.rc == 0, r.out + r.err
    rows = rows_of(r.out)
    assert ("basic", "makespan_jct_s") in rows and ("dualpath", "latency.ttft_s.p99") in rows
    assert all(c[-1] == "ok" and "exact" in c for c in rows.values()), r.out
    assert "differs" not in r.out  # the same settings and code
    assert r.out.splitlines()[-1].startswith("gate: pass, 0 regressed")


@pytest.mark.slow
def test_a_slower_storage_nic_fails_on_basic_makespan(cli, default_runs, tmp_path):
    junit, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    r = cli("gate", "--baseline", default_runs["a"], "--candidate", default_runs["slow_snic"],
            "--junit", junit, "--markdown", md)
    assert r.rc == 1, r.out + r.err
    rows = rows_of(r.out)
    basic = rows[("basic", "makespan_jct_s")]
    assert basic[-1] == "REGRESSED" and "exact" in basic
    assert float(basic[3]) > float(basic[2])  # candidate slower than baseline
    assert "differs: sim.snic_efficiency: - -> 0.4" in r.out  # listed above the table, not refused
    assert "basic makespan_jct_s" in r.out.splitlines()[-1]
    # JUnit: one case per system and metric; the regressed ones carry a failure naming the row
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert len(cases) == len(rows)
    failed = {(c.get("classname"), c.get("name")): c.find("failure") for c in cases if c.find("failure") is not None}
    assert ("dualpath.gate.basic", "makespan_jct_s") in failed
    assert int(suite.get("failures")) == len(failed) == sum(c[-1] == "REGRESSED" for c in rows.values())
    assert "REGRESSED" in failed[("dualpath.gate.basic", "makespan_jct_s")].get("message")
    text = md.read_text()
    assert "regressed" in text.splitlines()[0] and "| basic | makespan_jct_s |" in text and "**REGRESSED**" in text
    # a looser rule, given on the command line, replaces exact comparison for that metric
    r = cli("gate", "--baseline", default_runs["a"], "--candidate", default_runs["slow_snic"],
            "--rule", "makespan_jct_s:lower:5%")
    assert rows_of(r.out)[("basic", "makespan_jct_s")][-1] == "ok"
    assert "lower" in " ".join(rows_of(r.out)[("basic", "makespan_jct_s")])


@pytest.mark.slow
def test_a_different_scenario_is_refused_in_one_line(cli, default_runs, tmp_path):
    other = run(tmp_path / "smoke", SMOKE, "--set", "trace.synth.agents=4", "--set", "systems=[basic]")
    junit = tmp_path / "gate.xml"
    r = cli("gate", "--baseline", default_runs["a"], "--candidate", other, "--junit", junit)
    assert r.rc == 2
    assert len(r.err_lines) == 1 and "not comparable" in r.err and "'offline-ds660b-64k' vs 'smoke'" in r.err
    assert r.out == "" and not junit.exists()  # nothing left behind


def test_what_makes_results_incomparable(tmp_path):
    a = run(tmp_path / "a", DEFAULT, *TINY)
    summary = json.loads((a / "summary.json").read_text())
    cases = {"systems": lambda s: s["meta"]["scenario"].update(systems=["basic", "oracle"]),
             "trace": lambda s: s["meta"]["scenario"]["trace"]["synth"].update(agents=5),
             "schema": lambda s: s["meta"].update(schema=99)}
    for what, change in cases.items():
        s = json.loads(json.dumps(summary))
        change(s)
        path = tmp_path / f"{what}.json"
        path.write_text(json.dumps(s))
        with pytest.raises(InputError, match=what):
            gate.gate(str(a), str(path), gate.rules_with([]))
    # hardware, model, cluster and code version are differences, listed
    s = json.loads(json.dumps(summary))
    s["meta"]["scenario"].update(hardware="blackwell-b200", cluster={"prefill_nodes": 1, "decode_nodes": 4})
    s["meta"]["git"] = {"commit": "0123456789abcdef", "dirty": True}
    (tmp_path / "hw.json").write_text(json.dumps(s))
    outcome = gate.gate(str(a), str(tmp_path / "hw.json"), gate.rules_with([]))
    assert not outcome.regressed
    text = "\n".join(outcome.notes)
    assert "hardware: hopper-paper -> blackwell-b200" in text and "cluster.prefill_nodes: 2 -> 1" in text
    assert "git commit:" in text and "0123456789ab+dirty" in text


def test_summary_files_and_directories_of_runs(cli, tmp_path):
    a = run(tmp_path / "runs-a" / "p1", DEFAULT, *TINY)
    run(tmp_path / "runs-a" / "p2", DEFAULT, *TINY, "--set", "trace.synth.agents=5")
    shutil.copytree(tmp_path / "runs-a", tmp_path / "runs-b")
    copy = tmp_path / "baseline-summary.json"
    shutil.copy(a / "summary.json", copy)
    assert cli("gate", "--baseline", copy, "--candidate", a).rc == 0  # a summary file, any name
    r = cli("gate", "--baseline", tmp_path / "runs-a", "--candidate", tmp_path / "runs-b")
    assert r.rc == 0, r.err
    assert ("p1:", "basic") in {k[:2] for k in (tuple(line.split()[:2]) for line in r.out.splitlines())}
    # the index of a sweep names the points
    pd.DataFrame({"point": ["x", "y"], "run_dir": ["p1", "p2"]}).to_parquet(tmp_path / "runs-b" / "index.parquet")
    shutil.copy(tmp_path / "runs-b" / "index.parquet", tmp_path / "runs-a" / "index.parquet")
    r = cli("gate", "--baseline", tmp_path / "runs-a", "--candidate", tmp_path / "runs-b")
    assert r.rc == 0 and "x: basic" in r.out and "y: dualpath" in r.out
    # a point missing on one side cannot be compared
    shutil.rmtree(tmp_path / "runs-b" / "p2")
    (tmp_path / "runs-b" / "index.parquet").unlink()
    (tmp_path / "runs-a" / "index.parquet").unlink()
    r = cli("gate", "--baseline", tmp_path / "runs-a", "--candidate", tmp_path / "runs-b")
    assert r.rc == 2 and len(r.err_lines) == 1 and "only in baseline: p2" in r.err


def test_an_unfinished_candidate_fails(cli, tmp_path):
    a = run(tmp_path / "a", DEFAULT, *TINY)
    s = json.loads((a / "summary.json").read_text())
    s["status"] = "interrupted"
    (tmp_path / "cut.json").write_text(json.dumps(s))
    r = cli("gate", "--baseline", a, "--candidate", tmp_path / "cut.json")
    assert r.rc == 1 and "FAILED: the candidate run did not finish (status interrupted)" in r.out
    del s["systems"]["dualpath"]  # killed before its second system: dualpath's metrics are missing
    (tmp_path / "cut.json").write_text(json.dumps(s))
    r = cli("gate", "--baseline", a, "--candidate", tmp_path / "cut.json")
    assert r.rc == 1 and rows_of(r.out)[("dualpath", "makespan_jct_s")][-1] == "missing"


@pytest.mark.parametrize("args, says", [
    (("--rule", "makespan_jct_s:faster:5%"), "direction 'faster'"),
    (("--rule", "makespan_jct_s:lower"), "METRIC:DIRECTION:TOLERANCE"),
    (("--rule", "makespan_jct_s:lower:-1"), "tolerance '-1'"),
    (("--rule", "wall_s:lower:5%"), "never compared"),
    (("--rule", "latency.nothing.p50:lower:5%"), "in no system"),
])
def test_bad_rules_are_one_line(cli, tmp_path, args, says):
    a = run(tmp_path / "a", DEFAULT, *TINY) if "nothing" in args[1] else tmp_path
    r = cli("gate", "--baseline", a, "--candidate", a, *args)
    assert r.rc == 2 and len(r.err_lines) == 1 and says in r.err and r.out == "", r.err


def test_missing_inputs_are_one_line(cli, tmp_path):
    r = cli("gate", "--baseline", tmp_path / "nope", "--candidate", tmp_path)
    assert r.rc == 2 and len(r.err_lines) == 1 and "no such results directory" in r.err
    (tmp_path / "empty").mkdir()
    r = cli("gate", "--baseline", tmp_path / "empty", "--candidate", tmp_path / "empty")
    assert r.rc == 2 and len(r.err_lines) == 1 and "not a results directory" in r.err
    (tmp_path / "bad.json").write_text("{")
    r = cli("gate", "--baseline", tmp_path / "bad.json", "--candidate", tmp_path / "bad.json")
    assert r.rc == 2 and len(r.err_lines) == 1 and "bad.json:1: not valid JSON" in r.err
    smoke = REPO / "results" / "baselines" / "smoke"
    r = cli("gate", "--baseline", smoke, "--candidate", smoke, "--junit", tmp_path / "no" / "such" / "gate.xml")
    assert r.rc == 2 and len(r.err_lines) == 1 and "no such directory" in r.err and r.out == ""


# ----- noisy results ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_baseline(tmp_path_factory):
    return noisy_run(tmp_path_factory.mktemp("noisy") / "base", seed=100)


@pytest.mark.slow
def test_noisy_reruns_never_false_alarm(cli, noisy_baseline, tmp_path):
    """10 % run-to-run noise, 3 repeats: ten reruns of the same configuration all pass."""
    for seed in range(10):
        cand = noisy_run(tmp_path / f"rerun{seed}", seed=200 + seed)
        r = cli("gate", "--baseline", noisy_baseline, "--candidate", cand)
        assert r.rc == 0, r.out
        rows = rows_of(r.out)
        assert all("exact" not in c for c in rows.values())  # http results are judged on intervals
        assert all("[" in " ".join(c) for k, c in rows.items() if k[1].startswith("latency"))


@pytest.mark.slow
def test_noisy_20_percent_slowdown_fails(cli, noisy_baseline, tmp_path):
    cand = noisy_run(tmp_path / "slow", seed=300, slowdown=1.2)
    r = cli("gate", "--baseline", noisy_baseline, "--candidate", cand)
    assert r.rc == 1, r.out
    row = rows_of(r.out)[("fake", "latency.ttft_s.mean")]
    assert row[-1] == "REGRESSED"
    lo = float(next(c for c in row if c.startswith("[")).strip("[,"))
    assert lo > 1.05  # the whole interval past the 5 % tolerance
    assert {"makespan_jct_s", "latency.tpot_s.mean"} <= {m for (_, m), c in rows_of(r.out).items() if c[-1] == "REGRESSED"}


def test_noisy_verdicts_are_deterministic_and_one_repeat_is_weak(cli, tmp_path):
    base = noisy_run(tmp_path / "b1", seed=1, repeats=1)
    cand = noisy_run(tmp_path / "c1", seed=2, repeats=1)
    first = cli("gate", "--baseline", base, "--candidate", cand)
    again = cli("gate", "--baseline", base, "--candidate", cand)
    assert first.out == again.out and first.rc == again.rc  # the bootstrap is seeded
    line = next(x for x in first.out.splitlines() if x.startswith("fake") and "latency.ttft_s.mean" in x)
    assert "weak: 1 repeat" in line and "[" in line  # the interval holds the requests' noise only
    assert "weak verdict" in first.out.splitlines()[-1]


def test_bootstrap_interval_of_a_scaled_candidate():
    rng = np.random.default_rng(0)
    values = np.sort(rng.lognormal(0, 0.3, 50))
    counts = rng.integers(1, 20, 50)
    base = [(values, counts)] * 3
    cand = [(values * 1.5, counts)] * 3
    lo, hi = bootstrap.ratio_interval_requests(base, cand, "mean", seed=1)
    assert lo < 1.5 < hi and hi - lo < 0.3
    assert (lo, hi) == bootstrap.ratio_interval_requests(base, cand, "mean", seed=1)
    lo, hi = bootstrap.ratio_interval_runs([10.0, 10.0, 10.0], [12.0, 12.0, 12.0], seed=1)
    assert lo == pytest.approx(1.2) and hi == pytest.approx(1.2)
    lo, hi = bootstrap.ratio_interval_runs([9.0, 10.0, 11.0], [9.0, 10.0, 11.0], seed=1)
    assert lo < 1 < hi


@settings(max_examples=60, deadline=None)
@given(metric=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=20),
       direction=st.sampled_from(gate.DIRECTIONS), tolerance=st.floats(0, 10, allow_nan=False),
       percent=st.booleans())
def test_rules_parse_what_they_print(metric, direction, tolerance, percent):
    text = f"{metric}:{direction}:{100 * tolerance!r}%" if percent else f"{metric}:{direction}:{tolerance!r}"
    if metric.split(".")[0] in gate.NEVER_COMPARED:
        with pytest.raises(InputError):
            gate.parse_rule(text)
        return
    rule = gate.parse_rule(text)
    assert (rule.metric, rule.direction) == (metric, direction)
    assert rule.tolerance == pytest.approx(tolerance)


@given(st.text(max_size=30))
def test_rule_parser_fails_only_with_input_errors(text):
    try:
        gate.parse_rule(text)
    except InputError:
        pass


# ----- dualpath run --repeats ------------------------------------------------------------------------
def test_run_repeats_writes_every_repeat_and_pools_them(cli, tmp_path):
    one = run(tmp_path / "one", DEFAULT, *TINY)
    two = run(tmp_path / "two", DEFAULT, *TINY, "--repeats", "2")
    res = load_results(two)
    for table in ("requests", "agents", "links", "engines"):
        assert set(res[table]["repeat"]) == {0, 1}, table
    assert set(load_results(one)["requests"]["repeat"]) == {0}
    s1, s2 = (json.loads((d / "summary.json").read_text())["systems"]["basic"] for d in (one, two))
    assert [r["repeat"] for r in s2["repeats"]] == [0, 1] and "repeats" not in s1
    assert s2["counts"]["requests"]["total"] == 2 * s1["counts"]["requests"]["total"]
    assert s2["latency"]["ttft_s"]["count"] == 2 * s1["latency"]["ttft_s"]["count"]
    # the simulator repeats itself exactly, so pooled numbers equal one run's
    assert s2["makespan_jct_s"] == s1["makespan_jct_s"] and s2["latency"]["ttft_s"]["p99"] == s1["latency"]["ttft_s"]["p99"]
    r = cli("gate", "--baseline", one, "--candidate", two)
    assert r.rc == 0 and "differs: repeats: 1 -> 2" in r.out
    r = cli("run", DEFAULT, "--repeats", "0", "-o", tmp_path / "zero")
    assert r.rc == 2 and len(r.err_lines) == 1 and "--repeats" in r.err and not (tmp_path / "zero").exists()


def test_capacity_searches_compare_their_capacity(cli, tmp_path):
    meta = {"schema": 1, "scenario": {"name": "online", "backend": "sim", "systems": ["basic", "dualpath"],
                                      "trace": {"synth": {"preset": "paper-64k", "agents": 8, "seed": 1}}}}
    def capacity(basic, dual, path):
        path.write_text(json.dumps({"run_id": "x", "status": "ok", "meta": meta, "capacity": {
            "basic": {"capacity_aps": basic, "probes": []}, "dualpath": {"capacity_aps": dual, "probes": []}}}))
        return path
    base = capacity(0.25, 0.5, tmp_path / "base.json")
    r = cli("gate", "--baseline", base, "--candidate", capacity(0.25, 0.45, tmp_path / "cand.json"))
    assert r.rc == 1 and rows_of(r.out)[("dualpath", "capacity_aps")][-1] == "REGRESSED"
    assert set(rows_of(r.out)) == {("basic", "capacity_aps"), ("dualpath", "capacity_aps")}
    r = cli("gate", "--baseline", base, "--candidate", capacity(0.25, 0.45, tmp_path / "cand.json"),
            "--rule", "capacity_aps:higher:15%")
    assert r.rc == 0, r.out
    r = cli("run", DEFAULT, "--capacity", "--repeats", "2", "-o", tmp_path / "cap")
    assert r.rc == 2 and "--repeats" in r.err and not (tmp_path / "cap").exists()
