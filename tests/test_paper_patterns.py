"""The paper's patterns, predicted by the simulator on reduced-size versions of the paper scenarios.

The full-size scenarios (1,024 agents) are checked against the issue's bands by
`benchmarks/paper_scenarios.py`; here each pattern runs in seconds. To keep the reduced runs in the
regime of the full ones (Basic limited by its two prefill-side SNICs, DualPath not), the DS 660B
ablation uses 256 agents with half the effective SNIC rate: a quarter of the agents put about the
storage pressure of the full run on half the bandwidth. Only the Oracle and Basic JCT at 512 and 4,096
agents were fitted (benchmarks/calibrate.py); none of these numbers was.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.costmodel import SimConstants

PAPER = Path(__file__).resolve().parents[1] / "scenarios" / "paper"
HALF_SNIC = f"sim.snic_efficiency={SimConstants().snic_efficiency / 2}"


def run(cli, tmp_path, scenario: str, *sets: str) -> dict[str, dict]:
    args = ["run", PAPER / scenario, "-o", tmp_path / "r", "--json"]
    for s in sets:
        args += ["--set", s]
    res = cli(*args)
    assert res.rc == 0, res.err
    return res.json()["systems"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from harness.cli import main
    import json

    out = tmp_path_factory.mktemp("ablation") / "r"
    rc = main(["run", str(PAPER / "ablation-ds660b-64k.yaml"), "-o", str(out), "--set", "trace.synth.agents=256",
               "--set", HALF_SNIC])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())["systems"]


def jct(systems: dict, name: str) -> float:
    return systems[name]["makespan_jct_s"]


def test_dualpath_beats_basic_and_nears_the_oracle(ablation):
    assert jct(ablation, "basic") / jct(ablation, "dualpath") >= 1.25
    assert jct(ablation, "dualpath") <= 1.15 * jct(ablation, "oracle")


def test_ablation_ladder(ablation):
    """Both read paths buy most of the gain, the scheduler the rest, and the Oracle bounds them all."""
    basic = jct(ablation, "basic")
    rr = 1 - jct(ablation, "dualpath-rr") / basic
    full = 1 - jct(ablation, "dualpath") / basic
    assert 0.15 <= rr <= 0.46
    assert rr < full <= 0.53
    assert jct(ablation, "dualpath") >= 0.98 * jct(ablation, "oracle")


def test_snic_balance(ablation):
    """Round robin leaves the prefill-side SNICs with twice the reads; the scheduler evens them out."""
    assert ablation["dualpath-rr"]["snic_balance"] >= 1.3
    assert ablation["dualpath"]["snic_balance"] <= 1.25


def test_every_round_served_and_hits_match_the_trace(ablation):
    for summary in ablation.values():
        assert summary["counts"]["requests"]["ok"] == summary["counts"]["requests"]["total"] > 0
        assert summary["hit_rate_expected"] == pytest.approx(summary["hit_rate_achieved"])


def test_compute_bound_a_second_read_path_buys_nothing(cli, tmp_path):
    """With SNICs ten times faster, storage is never the bottleneck."""
    fast = f"sim.snic_efficiency={SimConstants().snic_efficiency * 10}"
    s = run(cli, tmp_path, "ablation-ds660b-64k.yaml", "trace.synth.agents=256", fast,
            "systems=[layerwise,dualpath-rr,dualpath,oracle]")
    assert jct(s, "dualpath-rr") == pytest.approx(jct(s, "layerwise"), rel=0.05)
    assert jct(s, "dualpath") == pytest.approx(jct(s, "oracle"), rel=0.05)


@pytest.fixture(scope="module")
def pd_ratio(tmp_path_factory):
    """DS 27B, 256 agents: JCT of (system, P/D)."""
    from harness.cli import main
    import json

    out = {}
    for pd in ("1p1d", "2p1d", "1p2d"):
        d = tmp_path_factory.mktemp(pd) / "r"
        assert main(["run", str(PAPER / f"pd-ratio-ds27b-64k-{pd}.yaml"), "-o", str(d),
                     "--set", "trace.synth.agents=256"]) == 0
        for system, s in json.loads((d / "summary.json").read_text())["systems"].items():
            out[(system, pd)] = s["makespan_jct_s"]
    return out


def test_pd_ratio_storage_bandwidth_decides(pd_ratio):
    """Paper 7.3: Basic 1P1D ~ Basic 1P2D (one prefill SNIC each); DualPath 1P1D ~ Basic 2P1D (two)."""
    assert pd_ratio[("basic", "1p1d")] == pytest.approx(pd_ratio[("basic", "1p2d")], rel=0.15)
    assert pd_ratio[("dualpath", "1p1d")] == pytest.approx(pd_ratio[("basic", "2p1d")], rel=0.15)
    assert pd_ratio[("basic", "1p1d")] > 1.3 * pd_ratio[("dualpath", "1p1d")]


def test_pd_ratio_three_snics_either_way(cli, tmp_path):
    """DualPath 2P1D ~ DualPath 1P2D (three SNICs each); at 512 agents, where storage still binds."""
    j = {pd: jct(run(cli, tmp_path / pd, f"pd-ratio-ds27b-64k-{pd}.yaml", "trace.synth.agents=512",
                     "systems=[dualpath]"), "dualpath") for pd in ("2p1d", "1p2d")}
    assert j["2p1d"] == pytest.approx(j["1p2d"], rel=0.15)
