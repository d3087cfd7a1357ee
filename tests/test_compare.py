"""`dualpath compare`: one results directory per profile, a side-by-side table read back from them, resume,
bad input; the link utilisation it reports, on hand-made telemetry."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from engines.costmodel import hardware_spec
from harness.compare import format_table, link_utilisation
from harness.results import load_results

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMALL = ("--set", "trace.synth.agents=6", "--set", "trace.synth.turns_mean=8", "--set", "trace.synth.append_mean=3000",
         "--set", "systems=[basic,dualpath]")


def _main(args) -> tuple[int, str, str]:
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    mp = pytest.MonkeyPatch()
    mp.setenv("DUALPATH_PROGRESS", "0")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        mp.undo()
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cmp") / "c"
    rc, out, err = _main(["compare", SCENARIO, "--hardware", "hopper-paper,hopper-2snic", *SMALL, "-o", out_dir])
    return rc, out, err, out_dir


def test_one_results_directory_per_profile(compared):
    rc, out, err, out_dir = compared
    assert rc == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.json", "compare.md", "hopper-2snic", "hopper-paper"]
    for profile in ("hopper-paper", "hopper-2snic"):
        results = load_results(out_dir / profile)
        assert results["summary"]["status"] == "ok"
        assert results["summary"]["meta"]["scenario"]["hardware"] == profile  # the profile really changed
        assert set(results["requests"]["system"]) == {"basic", "dualpath"}


def test_table_shows_each_profile_its_gain_and_bounds(compared):
    rc, out, err, out_dir = compared
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["hardware", "basic"] and "basic/dualpath JCT" in lines[0]
    assert "basic bottleneck" in lines[0]  # attribution in the summaries: a column naming the resource
    rows = {line.split()[0]: line for line in lines[1:]}
    assert all(any(r in rows[p] for r in ("snic_pe", "pe_compute", "de_compute")) for p in rows)
    assert "1/7 .. 7/2" in rows["hopper-paper"] and "1/3 .. 1" in rows["hopper-2snic"]
    assert "2:4 inside" in rows["hopper-paper"]
    comparison = json.loads((out_dir / "compare.json").read_text())
    for profile, row in comparison["profiles"].items():
        jct = {name: s["jct_s"] for name, s in row["systems"].items()}
        summary = load_results(out_dir / profile)["summary"]["systems"]
        assert jct == {name: s["makespan_jct_s"] for name, s in summary.items()}
        assert f"{jct['basic'] / jct['dualpath']:.2f}x" in rows[profile]
        assert row["systems"]["basic"]["link_utilisation"]["prefill snic rx"]["mean"] > 0
    assert (out_dir / "compare.md").read_text().count("hopper-") >= 4


def test_a_finished_profile_is_not_run_again(compared):
    out_dir = compared[3]
    before = (out_dir / "hopper-paper" / "summary.json").stat().st_mtime_ns
    rc, out, err = _main(["compare", SCENARIO, "--hardware", "hopper-paper", *SMALL, "-o", out_dir])
    assert rc == 0, err
    assert "hopper-paper: already done" in err
    assert (out_dir / "hopper-paper" / "summary.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("hardware, problem", [
    ("hopper-paper,no-such-box", "--hardware no-such-box"),
    ("hopper-paper,hopper-paper", "would share the results directory"),
    (",", "expected one or more hardware profiles"),
])
def test_bad_profiles_fail_before_anything_runs(tmp_path, hardware, problem):
    rc, out, err = _main(["compare", SCENARIO, "--hardware", hardware, *SMALL, "-o", tmp_path / "c"])
    assert rc == 2 and problem in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_bad_scenario_key_fails_before_anything_runs(tmp_path):
    rc, out, err = _main(["compare", SCENARIO, "--hardware", "hopper-paper", "--set", "cluster.prefil_nodes=2",
                          "-o", tmp_path / "c"])
    assert rc == 2 and "cluster.prefil_nodes" in err and not (tmp_path / "c").exists()


def test_link_utilisation_against_hand_made_telemetry():
    spec = hardware_spec("hopper-paper")  # SNIC 50 GB/s per node, CNIC 50 GB/s per GPU, DRAM 500 GB/s
    rows = [
        # 2 windows of 10 s over a 20 s run; p0's SNIC at full line rate in window 0, idle in window 1
        ("p0", "snic", "rx", 0.0, 10.0, 50e9 * 10),
        ("d0", "cnic3", "tx", 0.0, 10.0, 50e9 * 10 / 2),   # one of 8 CNICs half busy in window 0
        ("d0", "dram", "rx", 10.0, 20.0, 100e9 * 10),
        ("d0", "dram", "tx", 10.0, 20.0, 100e9 * 10),      # rx + tx counted together: 40 % of M in window 1
    ]
    links = pd.DataFrame(rows, columns=["node", "link", "direction", "t_start", "t_end", "bytes"])
    u = link_utilisation(links, spec, {"prefill": 1, "decode": 1}, 20.0)
    assert u["prefill snic rx"]["mean"] == pytest.approx(0.5)
    assert u["prefill snic rx"]["p90"] == pytest.approx(0.9)       # numpy's linear p90 of [1, 0]
    assert u["decode cnic tx"]["mean"] == pytest.approx(0.5 / 8 / 2)
    assert u["decode dram"]["mean"] == pytest.approx(0.2)
    assert set(u) == {"prefill snic rx", "decode cnic tx", "decode dram"}


def test_table_shows_bottleneck_only_when_attributed():
    row = {"dir": "x", "bounds": {"lower": "1/7", "upper": "7/2", "empty": False},
           "systems": {"basic": {"jct_s": 200.0}, "dualpath": {"jct_s": 100.0}}}
    text = format_table({"capacity": False, "profiles": {"x": row}})
    assert "bottleneck" not in text and "2.00x" in text
    row["systems"]["basic"]["bottleneck"] = "prefill snic"
    assert "prefill snic" in format_table({"capacity": False, "profiles": {"x": row}})


def test_a_profile_the_model_does_not_fit_fails_before_any_profile_runs(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    text = (REPO / "scenarios" / "hardware" / "hopper-paper.yaml").read_text()
    tiny.write_text(text.replace("hbm_bytes: 80.0e9", "hbm_bytes: 8.0e9").replace("name: hopper-paper", "name: tiny"))
    rc, out, err = _main(["compare", SCENARIO, "--hardware", f"hopper-paper,{tiny}", *SMALL, "-o", tmp_path / "c"])
    assert rc == 2 and len(err.splitlines()) == 1 and "on tiny:" in err and "HBM" in err
    assert not (tmp_path / "c").exists()


def test_capacity_without_an_slo_fails_before_anything_runs(tmp_path):
    rc, out, err = _main(["compare", SCENARIO, "--capacity", "--hardware", "hopper-paper", *SMALL, "-o", tmp_path / "c"])
    assert rc == 2 and "slo" in err and len(err.splitlines()) == 1 and not (tmp_path / "c").exists()


def test_json_is_the_only_thing_on_stdout(compared):
    out_dir = compared[3]
    rc, out, err = _main(["compare", SCENARIO, "--hardware", "hopper-paper,hopper-2snic", *SMALL, "-o", out_dir,
                          "--json"])
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc["profiles"]) == {"hopper-paper", "hopper-2snic"}
    assert doc["profiles"]["hopper-2snic"]["bounds"]["upper"] == "1"
